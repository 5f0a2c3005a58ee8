//! Integer and binary forms of an embedding, for vector stores that keep int8 (4x
//! smaller than f32) or one bit per dimension (32x smaller). Applied to the vector the
//! client asked for: after Matryoshka truncation and L2 normalisation.
//!
//! The rules, so that a client can reproduce them exactly:
//! - **int8**: `q[i] = round(v[i] * 127 / max|v|)`, rounding half away from zero, so
//!   the largest component maps to ±127 and the range is `-127..=127` (symmetric: -128
//!   is never produced). A zero vector gives zeros.
//! - **uint8**: `int8[i] + 128`, in `1..=255`.
//! - **ubinary**: bit `i` is 1 when `v[i] > 0`; byte `j` holds dimensions `8j..8j+8`
//!   with dimension `8j` in the most significant bit; a last partial byte is padded
//!   with zero bits. `ceil(dims / 8)` bytes.
//! - **binary**: each ubinary byte minus 128, as a signed byte.
//!
//! Per-vector scaling keeps the dot product of two int8 vectors proportional to their
//! cosine up to rounding (each vector is scaled by its own constant), which is what an
//! int8 index ranks by.

/// Signed 8-bit form: each vector scaled so that its largest component is ±127.
pub fn int8(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return vec![0; v.len()];
    }
    let scale = 127.0 / max;
    v.iter()
        // In range by construction (|x| <= max); the clamp guards rounding at the edge.
        .map(|x| (x * scale).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// Unsigned 8-bit form: the int8 form shifted by 128.
pub fn uint8(v: &[f32]) -> Vec<u8> {
    int8(v)
        .into_iter()
        .map(|q| (q as i16 + 128) as u8)
        .collect()
}

/// One bit per dimension (1 where positive), packed most significant bit first.
pub fn ubinary(v: &[f32]) -> Vec<u8> {
    v.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u8, |byte, (i, &x)| byte | (u8::from(x > 0.0) << (7 - i)))
        })
        .collect()
}

/// The packed bits as signed bytes: each ubinary byte minus 128.
pub fn binary(v: &[f32]) -> Vec<i8> {
    ubinary(v)
        .into_iter()
        .map(|b| (b as i16 - 128) as i8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_maps_the_largest_component_to_127() {
        assert_eq!(int8(&[0.5, -0.25, 0.0, 0.125]), vec![127, -64, 0, 32]);
        assert_eq!(int8(&[-0.2, 0.1]), vec![-127, 64]);
        assert_eq!(int8(&[0.0, 0.0]), vec![0, 0]);
        // Half away from zero: 0.5 * 127 = 63.5 -> 64, -63.5 -> -64.
        assert_eq!(int8(&[1.0, 0.5, -0.5]), vec![127, 64, -64]);
    }

    #[test]
    fn uint8_is_int8_plus_128() {
        let v = [0.3, -0.7, 0.1, 0.0];
        let signed = int8(&v);
        let unsigned = uint8(&v);
        for (s, u) in signed.iter().zip(&unsigned) {
            assert_eq!(*u as i32, *s as i32 + 128);
        }
        assert_eq!(unsigned[1], 1);
    }

    #[test]
    fn bits_are_signs_packed_msb_first() {
        let v = [1.0, -1.0, 0.5, 0.0, -0.1, 2.0, 3.0, -4.0, 0.7, -0.7];
        // 1 0 1 0 0 1 1 0 | 1 0 (padded with zeros)
        assert_eq!(ubinary(&v), vec![0b1010_0110, 0b1000_0000]);
        // 0b1010_0110 = 166 -> 38; 0b1000_0000 = 128 -> 0.
        assert_eq!(binary(&v), vec![38, 0]);
        assert_eq!(binary(&[-1.0; 8]), vec![-128]);
        assert_eq!(binary(&[1.0; 8]), vec![127]);
    }
}
