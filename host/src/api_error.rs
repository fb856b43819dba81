//! dr-provision's Error shape (`models.Error`), returned for every failed request.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ApiError {
    pub model: String,
    pub key: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub messages: Vec<String>,
    pub code: u16,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> ApiError {
        ApiError { model: String::new(), key: String::new(), kind: "plugin".to_string(), messages: vec![message.into()], code }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// Prefixes the message with the action, so an operator reading it knows where.
    pub fn in_action(mut self, command: &str) -> ApiError {
        self.kind = format!("context-engines/{command}");
        for message in &mut self.messages {
            *message = format!("{command}: {message}");
        }
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.messages.join("; "), self.code)
    }
}
