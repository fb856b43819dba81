//! An engine's settings: its entry of the plugin param `context-engines/engine-config`.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{EngineError, Result};

/// The JSON object an engine is configured with, with accessors whose errors are
/// [`EngineError::BadConfig`] messages naming the engine and the key.
///
/// The key `allowed-hosts` belongs to the host (it decides where the engine may connect);
/// an engine may read it but need not.
#[derive(Debug, Clone)]
pub struct Settings {
    engine: String,
    object: Map<String, Value>,
}

impl Settings {
    /// Parses `json`, which must be a JSON object (an empty or blank string counts as
    /// `{}`). `engine` is the engine's name, used in error messages.
    pub fn parse(engine: &str, json: &str) -> Result<Settings> {
        let object = if json.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(object)) => object,
                Ok(other) => {
                    return Err(EngineError::BadConfig(format!("{engine} settings: expected a JSON object, got {}", json_kind(&other))));
                }
                Err(e) => {
                    return Err(EngineError::BadConfig(format!("{engine} settings: not valid JSON: {e}")));
                }
            }
        };
        Ok(Settings { engine: engine.to_string(), object })
    }

    /// The whole object.
    pub fn object(&self) -> &Map<String, Value> {
        &self.object
    }

    /// The value of `key`, if present (JSON `null` counts as absent).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.object.get(key).filter(|v| !v.is_null())
    }

    /// The string value of `key`: `None` when absent, an error when not a string.
    pub fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(key, &format!("must be a string, got {}", json_kind(other)))),
        }
    }

    /// The string value of `key`, which must be present and non-empty. `example` is shown
    /// in the error to say what is expected.
    pub fn required_string(&self, key: &str, example: &str) -> Result<&str> {
        match self.string(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(self.error(key, &format!("is empty (e.g. {example})"))),
            None => Err(self.error(key, &format!("is missing (e.g. {example})"))),
        }
    }

    /// The value of `key` deserialized as `T`: `None` when absent.
    pub fn value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => T::deserialize(v).map(Some).map_err(|e| self.error(key, &format!("is invalid: {e}"))),
        }
    }

    /// The whole object deserialized as `T` (a `#[derive(Deserialize)]` struct, typically
    /// with `#[serde(rename_all = "kebab-case")]`).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&Value::Object(self.object.clone())).map_err(|e| EngineError::BadConfig(format!("{} settings: {e}", self.engine)))
    }

    /// A [`EngineError::BadConfig`] saying `key` `problem` (e.g. "is missing").
    pub fn error(&self, key: &str, problem: &str) -> EngineError {
        EngineError::BadConfig(format!("{} settings: `{key}` {problem}", self.engine))
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_is_empty_object_and_non_objects_are_refused() {
        assert!(Settings::parse("x", "").unwrap().object().is_empty());
        assert!(Settings::parse("x", "{}").unwrap().object().is_empty());
        let e = Settings::parse("x", "[1]").unwrap_err();
        assert!(matches!(e, EngineError::BadConfig(ref m) if m.contains("an array")), "{e}");
        assert!(matches!(Settings::parse("x", "{").unwrap_err(), EngineError::BadConfig(_)));
    }

    #[test]
    fn required_strings_name_the_key() {
        let s = Settings::parse("docker-api", r#"{"a": 1, "b": "", "c": "ok"}"#).unwrap();
        assert_eq!(s.required_string("c", "x").unwrap(), "ok");
        let missing = s.required_string("base-url", "\"http://h:1\"").unwrap_err().to_string();
        assert!(missing.contains("docker-api settings: `base-url` is missing"), "{missing}");
        assert!(s.required_string("a", "x").unwrap_err().to_string().contains("must be a string"));
        assert!(s.required_string("b", "x").unwrap_err().to_string().contains("is empty"));
    }
}
