//! Request bodies parsed straight into their typed fields, with limits enforced while
//! parsing.
//!
//! A body is never turned into a `serde_json::Value` first: that costs ~30 bytes of
//! tree per byte of a hostile `["a","a",...]` and only then lets the item limit be
//! checked. Here every field is deserialised into its final type (a field of the wrong
//! type fails at its first token, without being read), unknown fields are skipped
//! without being stored, and the list fields (`input`, `documents`, ...) stop at the
//! first item past the limit. The first failing field, tracked on the way, becomes the
//! error's `param`.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::ApiError;

thread_local! {
    /// The most items a list field may hold, for the parse running on this thread.
    static MAX_ITEMS: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Parses `body` as `T`, with at most `max_items` items in each list field. Errors
/// name the top-level field at fault.
pub fn parse<T: DeserializeOwned>(body: &[u8], max_items: usize) -> Result<T, ApiError> {
    let previous = MAX_ITEMS.with(|m| m.replace(max_items));
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = serde_path_to_error::deserialize(&mut de);
    MAX_ITEMS.with(|m| m.set(previous));
    let value = result.map_err(to_api_error)?;
    de.end().map_err(|e| invalid_json(&e))?;
    Ok(value)
}

fn invalid_json(e: &serde_json::Error) -> ApiError {
    ApiError::invalid(
        format!("We could not parse the JSON body of your request: {e}"),
        None,
    )
    .with_code("invalid_json")
}

fn max_items() -> usize {
    MAX_ITEMS.with(Cell::get)
}

fn to_api_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().clone();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return invalid_json(&inner);
    }
    let param = path.iter().next().and_then(|segment| match segment {
        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
        _ => None,
    });
    match param {
        None => ApiError::invalid("The request body must be a JSON object", None),
        Some(param) => {
            // serde_json appends " at line L column C"; the field name says more.
            let message = inner.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(m, _)| m);
            ApiError::invalid(format!("'{param}': {message}"), Some(&param))
        }
    }
}

/// A list field's items, held to the limit of the parse in progress.
struct Bounded<'a> {
    field: &'a str,
    max: usize,
    count: usize,
}

impl<'a> Bounded<'a> {
    fn new(field: &'a str) -> Self {
        Self {
            field,
            max: max_items(),
            count: 0,
        }
    }

    fn admit<E: de::Error>(&mut self) -> Result<usize, E> {
        if self.count == self.max {
            return Err(E::custom(format!(
                "'{}' has more items than the limit of {}",
                self.field, self.max
            )));
        }
        self.count += 1;
        Ok(self.count - 1)
    }
}

/// OpenAI's `input`: a string, an array of strings, an array of token ids, or an array
/// of arrays of token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl Inputs {
    pub fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::Tokens(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One element of an `input` array, whichever of the three forms it takes.
enum Item {
    Text(String),
    Token(u32),
    Tokens(Vec<u32>),
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a token id or an array of token ids")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Item, E> {
                Ok(Item::Text(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Item, E> {
                Ok(Item::Text(s))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Item, E> {
                token(n).map(Item::Token)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
                let mut ids = Vec::new();
                while let Some(n) = seq.next_element::<u64>()? {
                    ids.push(token(n)?);
                }
                Ok(Item::Tokens(ids))
            }
        }
        d.deserialize_any(V)
    }
}

fn token<E: de::Error>(n: u64) -> Result<u32, E> {
    u32::try_from(n).map_err(|_| E::custom(format!("token id {n} is out of range")))
}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Inputs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings or token ids")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Inputs, E> {
                if s.is_empty() {
                    return Err(E::custom("'input' must not be an empty string"));
                }
                Ok(Inputs::Texts(vec![s.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                let mut bound = Bounded::new("input");
                let mut texts = Vec::new();
                let mut ids = Vec::new();
                let mut seqs = Vec::new();
                while let Some(item) = seq.next_element::<Item>()? {
                    let i = bound.admit()?;
                    let first = (!texts.is_empty(), !ids.is_empty(), !seqs.is_empty());
                    match item {
                        Item::Text(_) if first.1 || first.2 => {
                            return Err(mixed(i, "a string"));
                        }
                        Item::Text(s) if s.is_empty() => {
                            return Err(de::Error::custom(format!("input[{i}] is an empty string")))
                        }
                        Item::Text(s) => texts.push(s),
                        Item::Token(_) if first.0 || first.2 => {
                            return Err(mixed(i, "a token id"));
                        }
                        Item::Token(t) => ids.push(t),
                        Item::Tokens(_) if first.0 || first.1 => {
                            return Err(mixed(i, "an array of tokens"));
                        }
                        Item::Tokens(t) if t.is_empty() => {
                            return Err(de::Error::custom(format!(
                                "input[{i}] is an empty array of tokens"
                            )))
                        }
                        Item::Tokens(t) => seqs.push(t),
                    }
                }
                match (texts.is_empty(), ids.is_empty(), seqs.is_empty()) {
                    (false, _, _) => Ok(Inputs::Texts(texts)),
                    (_, false, _) => Ok(Inputs::Tokens(vec![ids])),
                    (_, _, false) => Ok(Inputs::Tokens(seqs)),
                    _ => Err(de::Error::custom("'input' must not be an empty array")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn mixed<E: de::Error>(i: usize, what: &str) -> E {
    E::custom(format!(
        "input[{i}] is {what}, but earlier items are not: arrays must not mix types"
    ))
}

/// A list of documents: strings or `{"text": string, ...}` objects, at least one, at
/// most the parse's limit, none empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Documents(pub Vec<String>);

/// One document: a string, or an object whose `text` is one (other keys are skipped).
struct Document(String);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Document;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an object with a string 'text'")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Document, E> {
                Ok(Document(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Document, E> {
                Ok(Document(s))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
                let mut text = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "text" && text.is_none() {
                        text = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                text.map(Document)
                    .ok_or_else(|| de::Error::custom("a document object needs a string 'text'"))
            }
        }
        d.deserialize_any(V)
    }
}

/// The items of a document list, for the field `field` (for messages).
fn collect_documents<'de, A: SeqAccess<'de>>(
    mut seq: A,
    field: &str,
) -> Result<Vec<String>, A::Error> {
    let mut bound = Bounded::new(field);
    let mut docs = Vec::new();
    while let Some(Document(text)) = seq.next_element::<Document>()? {
        let i = bound.admit()?;
        if text.is_empty() {
            return Err(de::Error::custom(format!(
                "{field}[{i}] is an empty string"
            )));
        }
        docs.push(text);
    }
    if docs.is_empty() {
        return Err(de::Error::custom(format!("'{field}' must not be empty")));
    }
    Ok(docs)
}

/// A list of documents, or (with `one`) a single string standing for a list of one.
fn documents<'de, D: Deserializer<'de>>(
    d: D,
    field: &'static str,
    one: bool,
) -> Result<Option<Documents>, D::Error> {
    struct V {
        field: &'static str,
        one: bool,
    }
    impl<'de> Visitor<'de> for V {
        type Value = Option<Documents>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            if self.one {
                f.write_str("a string or an array of strings")
            } else {
                f.write_str("an array of documents")
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<Documents>, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<Documents>, E> {
            if !self.one {
                return Err(E::invalid_type(de::Unexpected::Str(s), &self));
            }
            if s.is_empty() {
                return Err(E::custom(format!("'{}' must not be empty", self.field)));
            }
            Ok(Some(Documents(vec![s.to_string()])))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<Documents>, A::Error> {
            collect_documents(seq, self.field).map(|d| Some(Documents(d)))
        }
    }
    d.deserialize_any(V { field, one })
}

/// `documents` (Jina, Cohere).
pub fn documents_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Documents>, D::Error> {
    documents(d, "documents", false)
}

/// `texts` (TEI).
pub fn texts_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Documents>, D::Error> {
    documents(d, "texts", false)
}

/// vLLM's `text_1`: one string or a list.
pub fn text_1_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Documents>, D::Error> {
    documents(d, "text_1", true)
}

/// vLLM's `text_2`: one string or a list.
pub fn text_2_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Documents>, D::Error> {
    documents(d, "text_2", true)
}

/// Cohere's v2 `inputs`: `[{"content": [{"type": "text", "text": ...}, ...]}, ...]`,
/// each input's text parts joined by a newline into one text. Images are refused
/// (the model reads text only).
pub fn content_inputs_field<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Documents>, D::Error> {
    struct Part(String);
    impl<'de> Deserialize<'de> for Part {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            #[derive(Deserialize)]
            struct Raw {
                #[serde(rename = "type")]
                kind: String,
                text: Option<String>,
            }
            let raw = Raw::deserialize(d)?;
            match (raw.kind.as_str(), raw.text) {
                ("text", Some(text)) => Ok(Part(text)),
                ("text", None) => Err(de::Error::custom("a text content part needs 'text'")),
                (other, _) => Err(de::Error::custom(format!(
                    "content of type '{other}' is not supported: this model embeds text only"
                ))),
            }
        }
    }
    struct Input(String);
    impl<'de> Deserialize<'de> for Input {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            #[derive(Deserialize)]
            struct Raw {
                content: Vec<Part>,
            }
            let parts = Raw::deserialize(d)?.content;
            let text: Vec<String> = parts.into_iter().map(|p| p.0).collect();
            Ok(Input(text.join("\n")))
        }
    }
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Documents>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of inputs, each {\"content\": [...]}")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<Documents>, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Documents>, A::Error> {
            let mut bound = Bounded::new("inputs");
            let mut texts = Vec::new();
            while let Some(Input(text)) = seq.next_element::<Input>()? {
                let i = bound.admit()?;
                if text.is_empty() {
                    return Err(de::Error::custom(format!("inputs[{i}] has no text")));
                }
                texts.push(text);
            }
            if texts.is_empty() {
                return Err(de::Error::custom("'inputs' must not be empty"));
            }
            Ok(Some(Documents(texts)))
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Req {
        input: Option<Inputs>,
        #[serde(default, deserialize_with = "documents_field")]
        documents: Option<Documents>,
        model: Option<String>,
    }

    fn p(body: &str, max: usize) -> Result<Req, ApiError> {
        parse(body.as_bytes(), max)
    }

    #[test]
    fn inputs_in_all_four_shapes() {
        let i = |b: &str| p(b, 10).unwrap().input.unwrap();
        assert_eq!(i(r#"{"input":"a"}"#), Inputs::Texts(vec!["a".into()]));
        assert_eq!(
            i(r#"{"input":["a","b"]}"#),
            Inputs::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(i(r#"{"input":[1,2]}"#), Inputs::Tokens(vec![vec![1, 2]]));
        assert_eq!(
            i(r#"{"input":[[1],[2,3]]}"#),
            Inputs::Tokens(vec![vec![1], vec![2, 3]])
        );
    }

    #[test]
    fn limits_stop_the_parse_and_errors_name_the_field() {
        let err = p(r#"{"input":["a","a","a"]}"#, 2).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("input"));
        assert!(err.message.contains("limit of 2"), "{}", err.message);
        let err = p(r#"{"documents":["a","a","a"]}"#, 2).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("documents"));
        for (body, param) in [
            (r#"{"input":["a",1]}"#, "input"),
            (r#"{"input":[1,"a"]}"#, "input"),
            (r#"{"input":[-1]}"#, "input"),
            (r#"{"input":[4294967296]}"#, "input"),
            (r#"{"input":[[]]}"#, "input"),
            (r#"{"input":[]}"#, "input"),
            (r#"{"input":""}"#, "input"),
            (r#"{"input":{"a":1}}"#, "input"),
            (r#"{"model":7}"#, "model"),
            (r#"{"documents":[{"txt":"a"}]}"#, "documents"),
            (r#"{"documents":[""]}"#, "documents"),
            (r#"{"documents":"a"}"#, "documents"),
        ] {
            assert_eq!(
                p(body, 10).unwrap_err().param.as_deref(),
                Some(param),
                "{body}"
            );
        }
        let err = p(r#"{"input": "#, 10).unwrap_err();
        assert_eq!(err.code, Some("invalid_json"));
        let err = p("[1, 2]", 10).unwrap_err();
        assert!(err.message.contains("JSON object"), "{}", err.message);
        assert!(p(r#"{"input":"a"} trailing"#, 10).is_err());
    }

    #[test]
    fn unknown_fields_are_skipped_and_documents_take_objects() {
        let r = p(
            r#"{"other": [[1, {"x": "y"}]], "documents": [{"text": "a", "id": 3}, "b"]}"#,
            10,
        )
        .unwrap();
        assert_eq!(r.documents, Some(Documents(vec!["a".into(), "b".into()])));
        assert!(r.input.is_none() && r.model.is_none());
    }
}
