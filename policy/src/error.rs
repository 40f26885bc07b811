//! Error types for loading policies and decoding transaction views.

/// A policy file could not be loaded.
///
/// Every variant names the file (the `source` passed to
/// [`crate::Policy::from_toml_str`]); parse and validation errors also carry the
/// 1-based line and column of the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text is larger than [`crate::MAX_POLICY_BYTES`].
    #[error("{file}: policy is {size} bytes, larger than the limit of {limit} bytes")]
    TooLarge {
        /// File name used in messages.
        file: String,
        /// Size of the text in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The text is not a valid policy: a TOML syntax error, an unknown field, a wrong
    /// type, or an impossible value.
    #[error("{file}:{line}:{column}: {reason}")]
    Invalid {
        /// File name used in messages.
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column (in characters) of the offending value.
        column: usize,
        /// What is wrong, in lower case.
        reason: String,
    },
}

impl PolicyError {
    /// The file name the error refers to.
    pub fn file(&self) -> &str {
        match self {
            PolicyError::TooLarge { file, .. } | PolicyError::Invalid { file, .. } => file,
        }
    }

    /// The 1-based line of the offending value, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::TooLarge { .. } => None,
            PolicyError::Invalid { line, .. } => Some(*line),
        }
    }

    /// The reason without the location prefix.
    pub fn reason(&self) -> String {
        match self {
            PolicyError::TooLarge { size, limit, .. } => {
                format!("policy is {size} bytes, larger than the limit of {limit} bytes")
            }
            PolicyError::Invalid { reason, .. } => reason.clone(),
        }
    }
}

/// A JSON transaction view or evaluation request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is larger than [`crate::MAX_VIEW_JSON_BYTES`].
    #[error("input is {size} bytes, larger than the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The input is not valid JSON for the expected structure.
    #[error("invalid json at line {line}, column {column}: {reason}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Converts a byte offset in `text` to a 1-based (line, column) pair, counting columns
/// in characters. Offsets past the end point just after the last character.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_characters() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 5), (2, 3));
        // inside the two-byte 'é': rounds down to its start
        assert_eq!(line_col(t, 6), (2, 3));
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 1000), (3, 2));
    }

    #[test]
    fn invalid_error_displays_file_line_column_reason() {
        let e = PolicyError::Invalid {
            file: "p.toml".into(),
            line: 3,
            column: 7,
            reason: "bad".into(),
        };
        assert_eq!(e.to_string(), "p.toml:3:7: bad");
        assert_eq!(e.line(), Some(3));
        assert_eq!(e.file(), "p.toml");
    }
}
