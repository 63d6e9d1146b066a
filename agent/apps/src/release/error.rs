use std::fmt;

/// Where in a release a problem sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The file's top level (`name:`, `services:`, ...).
    TopLevel,
    /// The release metadata, top-level `x-containeros:`.
    Metadata,
    Service(String),
    Volume(String),
    Network(String),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::TopLevel => f.write_str("top level"),
            Place::Metadata => f.write_str("`x-containeros`"),
            Place::Service(s) => write!(f, "service `{s}`"),
            Place::Volume(v) => write!(f, "volume `{v}`"),
            Place::Network(n) => write!(f, "network `{n}`"),
        }
    }
}

/// Why a release file was refused. Every variant names the file given by
/// the caller and, where it could be found, the line.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The text is not YAML, or not a mapping at its top.
    #[error("{file}{}: cannot read the release as YAML: {message}", Line(*line))]
    ReadYaml {
        file: String,
        line: Option<usize>,
        message: String,
    },
    /// A field the agent does not support (or does not know) is present.
    #[error("{file}{}: {place}: field `{field}` is not supported: {reason}", Line(*line))]
    UnsupportedField {
        file: String,
        line: Option<usize>,
        place: Place,
        field: String,
        reason: String,
    },
    /// A supported field has a value the agent cannot use (`field` is
    /// empty when the place itself is wrong, e.g. a service that is not a
    /// mapping).
    #[error("{file}{}: {place}: {}{reason}", Line(*line), Field(field))]
    InvalidField {
        file: String,
        line: Option<usize>,
        place: Place,
        field: String,
        reason: String,
    },
    /// `depends_on` links services in a circle, which has no start order.
    #[error(
        "{file}{}: services depend on each other in a cycle: {}; remove one of these `depends_on` entries",
        Line(*line),
        cycle.join(" -> ")
    )]
    DependencyCycle {
        file: String,
        line: Option<usize>,
        cycle: Vec<String>,
    },
}

/// "field `x`: ", or nothing for the place itself.
struct Field<'a>(&'a str);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => Ok(()),
            field => write!(f, "field `{field}`: "),
        }
    }
}

/// `:<line>` when known.
struct Line(Option<usize>);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, ":{line}"),
            None => Ok(()),
        }
    }
}
