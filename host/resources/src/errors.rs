use std::fmt;

/// Where an object came from: a file and document, or the Kubernetes API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Document { file: String, index: usize },
    Api,
}

impl Source {
    pub fn document(file: &str, index: usize) -> Self {
        Source::Document {
            file: file.to_string(),
            index,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Document { file, index } => write!(f, "{file}: document {}", index + 1),
            Source::Api => write!(f, "API"),
        }
    }
}

/// A resource that could not be read or converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ResourceError {
    /// Where the object came from.
    pub origin: Source,
    /// Kind and `namespace/name` (or name) when known.
    pub object: Option<(String, Option<String>)>,
    /// The field path, e.g. `spec.listeners[0].port`.
    pub field: Option<String>,
    pub message: String,
}

impl ResourceError {
    pub fn new(
        source: Source,
        object: Option<(String, Option<String>)>,
        field: Option<String>,
        message: String,
    ) -> Self {
        ResourceError {
            origin: source,
            object,
            field,
            message,
        }
    }
}

impl ResourceError {
    /// The object `key` (kind, namespace, name) at `source` was already
    /// defined at `first` (in another file).
    pub fn defined_twice(key: &(String, String, String), source: Source, first: &Source) -> Self {
        let (kind, namespace, name) = key;
        let name = if namespace.is_empty() {
            name.clone()
        } else {
            format!("{namespace}/{name}")
        };
        ResourceError::new(
            source,
            Some((kind.clone(), Some(name))),
            None,
            format!("defined twice; first defined at {first}"),
        )
    }
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((kind, name)) = &self.object {
            write!(f, " ({kind} {})", name.as_deref().unwrap_or("<unnamed>"))?;
        }
        match self.field.as_deref().filter(|f| !f.is_empty()) {
            Some(field) => write!(f, ": {field}: {}", self.message),
            None => write!(f, ": {}", self.message),
        }
    }
}
