//! Field-level validation errors, shaped like Kubernetes' so they become `Status` causes that
//! kubectl prints as `The Pod "x" is invalid: spec.containers[0].image: Required value`.

use std::fmt;

/// What is wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Required,
    Invalid(String),
    Duplicate(String),
    NotSupported(String, Vec<String>),
    Forbidden,
    TooLong(usize),
    TooMany(usize),
    /// Too many, with how many there were.
    TooManyOf(usize, usize),
    /// A value not among those allowed, both already rendered (JSON values).
    NotSupportedRendered(String, Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub kind: ErrorKind,
    /// JSON path in Kubernetes' notation: `spec.containers[0].ports[1].containerPort`.
    pub field: String,
    pub detail: String,
}

impl FieldError {
    /// The `reason` of the matching `StatusCause`.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::Required => "FieldValueRequired",
            ErrorKind::Invalid(_) => "FieldValueInvalid",
            ErrorKind::Duplicate(_) => "FieldValueDuplicate",
            ErrorKind::NotSupported(..) => "FieldValueNotSupported",
            ErrorKind::Forbidden => "FieldValueForbidden",
            ErrorKind::TooLong(_) => "FieldValueTooLong",
            ErrorKind::TooMany(_) | ErrorKind::TooManyOf(..) => "FieldValueTooMany",
            ErrorKind::NotSupportedRendered(..) => "FieldValueNotSupported",
        }
    }

    /// The message without the field path, as a `StatusCause` carries it.
    pub fn body(&self) -> String {
        let head = match &self.kind {
            ErrorKind::Required => "Required value".to_string(),
            ErrorKind::Invalid(v) => format!("Invalid value: {v}"),
            ErrorKind::Duplicate(v) => format!("Duplicate value: {v}"),
            ErrorKind::NotSupported(v, allowed) => {
                let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                format!(
                    "Unsupported value: {v}: supported values: {}",
                    allowed.join(", ")
                )
            }
            ErrorKind::Forbidden => "Forbidden".to_string(),
            ErrorKind::TooLong(max) => format!("Too long: may not be more than {max} bytes"),
            ErrorKind::TooMany(max) => format!("Too many: must have at most {max} items"),
            ErrorKind::TooManyOf(n, max) => format!("Too many: {n}: must have at most {max} items"),
            ErrorKind::NotSupportedRendered(v, allowed) => {
                format!(
                    "Unsupported value: {v}: supported values: {}",
                    allowed.join(", ")
                )
            }
        };
        if self.detail.is_empty() {
            head
        } else {
            format!("{head}: {}", self.detail)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Render a value the way Kubernetes quotes it in messages: strings quoted, numbers bare.
pub fn quote(v: impl fmt::Debug) -> String {
    format!("{v:?}")
}

/// A path into an object while validating it; cheap to extend.
#[derive(Clone, Debug, Default)]
pub struct Path(String);

impl Path {
    pub fn root(name: &str) -> Path {
        Path(name.to_string())
    }

    pub fn child(&self, name: &str) -> Path {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }

    pub fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }

    pub fn key(&self, k: &str) -> Path {
        Path(format!("{}[{k}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Collects the errors of one validation pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push(&mut self, kind: ErrorKind, path: &Path, detail: impl Into<String>) {
        self.0.push(FieldError {
            kind,
            field: path.0.clone(),
            detail: detail.into(),
        });
    }

    pub fn required(&mut self, path: &Path, detail: impl Into<String>) {
        self.push(ErrorKind::Required, path, detail);
    }

    pub fn invalid(&mut self, path: &Path, value: impl fmt::Debug, detail: impl Into<String>) {
        self.push(ErrorKind::Invalid(quote(value)), path, detail);
    }

    /// Invalid, with the value already in Kubernetes' form (JSON values: strings quoted).
    pub fn invalid_rendered(&mut self, path: &Path, value: String, detail: impl Into<String>) {
        self.push(ErrorKind::Invalid(value), path, detail);
    }

    pub fn duplicate_rendered(&mut self, path: &Path, value: String) {
        self.push(ErrorKind::Duplicate(value), path, "");
    }

    pub fn not_supported_rendered(&mut self, path: &Path, value: String, allowed: Vec<String>) {
        self.push(ErrorKind::NotSupportedRendered(value, allowed), path, "");
    }

    pub fn too_many_of(&mut self, path: &Path, n: usize, max: usize) {
        self.push(ErrorKind::TooManyOf(n, max), path, "");
    }

    pub fn duplicate(&mut self, path: &Path, value: impl fmt::Debug) {
        self.push(ErrorKind::Duplicate(quote(value)), path, "");
    }

    pub fn not_supported(&mut self, path: &Path, value: impl fmt::Debug, allowed: &[&str]) {
        let allowed = allowed.iter().map(|s| s.to_string()).collect();
        self.push(ErrorKind::NotSupported(quote(value), allowed), path, "");
    }

    pub fn forbidden(&mut self, path: &Path, detail: impl Into<String>) {
        self.push(ErrorKind::Forbidden, path, detail);
    }

    pub fn too_many(&mut self, path: &Path, max: usize) {
        self.push(ErrorKind::TooMany(max), path, "");
    }

    pub fn too_long(&mut self, path: &Path, max: usize) {
        self.push(ErrorKind::TooLong(max), path, "");
    }

    /// Check that `value` is one of `allowed`.
    pub fn one_of(&mut self, path: &Path, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.not_supported(path, value, allowed);
        }
    }

    /// Check that a number is not negative.
    pub fn non_negative(&mut self, path: &Path, value: Option<i64>) {
        if let Some(v) = value
            && v < 0
        {
            self.invalid(path, v, "must be greater than or equal to 0");
        }
    }

    /// Check that an immutable field did not change on update.
    pub fn immutable<T: PartialEq + fmt::Debug>(&mut self, path: &Path, new: &T, old: &T) {
        if new != old {
            self.invalid(path, new, "field is immutable");
        }
    }

    pub fn extend(&mut self, other: FieldErrors) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for FieldErrors {
    /// One error bare; several in brackets, comma separated, as Kubernetes prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                let parts: Vec<String> = many.iter().map(|e| e.to_string()).collect();
                write!(f, "[{}]", parts.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_kubernetes() {
        let mut errs = FieldErrors::default();
        let c = Path::root("spec").child("containers").index(0);
        errs.required(&c.child("image"), "");
        assert_eq!(errs.to_string(), "spec.containers[0].image: Required value");
        errs.not_supported(
            &Path::root("spec").child("restartPolicy"),
            "Sometimes",
            &["Always", "Never"],
        );
        assert_eq!(
            errs.to_string(),
            "[spec.containers[0].image: Required value, spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"Never\"]"
        );
        assert_eq!(errs.0[1].reason(), "FieldValueNotSupported");
    }
}
