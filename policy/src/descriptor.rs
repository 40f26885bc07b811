//! Light-weight output-descriptor handling: syntax checks, the BIP-380 checksum and
//! a normal form used for matching.
//!
//! The engine never derives scripts from descriptors. The caller (the signer crate)
//! derives them and tells the engine, per output, which descriptors the output's
//! scriptPubKey belongs to (`TxOutput::descriptors`). Matching compares normal forms.

/// Characters a descriptor may contain, in the order BIP-380 assigns them values.
const INPUT_CHARSET: &str =
    "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ ";
/// Characters of the 8-character checksum.
const CHECKSUM_CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// Longest descriptor accepted, in bytes.
pub const MAX_DESCRIPTOR_LEN: usize = 4096;

fn polymod(symbols: impl IntoIterator<Item = u64>) -> u64 {
    const GEN: [u64; 5] = [
        0xf5dee51989,
        0xa9fdca3312,
        0x1bab10e32d,
        0x3706b1677a,
        0x644d626ffd,
    ];
    let mut chk: u64 = 1;
    for value in symbols {
        let top = chk >> 35;
        chk = ((chk & 0x7_ffff_ffff) << 5) ^ value;
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

/// Expands descriptor text into checksum symbols; `None` if a character is outside
/// the descriptor character set.
fn expand(desc: &str) -> Option<Vec<u64>> {
    let mut symbols = Vec::with_capacity(desc.len() + desc.len() / 3 + 1);
    let mut groups: Vec<u64> = Vec::with_capacity(3);
    for c in desc.chars() {
        let v = INPUT_CHARSET.find(c)? as u64;
        symbols.push(v & 31);
        groups.push(v >> 5);
        if groups.len() == 3 {
            symbols.push(groups[0] * 9 + groups[1] * 3 + groups[2]);
            groups.clear();
        }
    }
    match groups.as_slice() {
        [a] => symbols.push(*a),
        [a, b] => symbols.push(a * 3 + b),
        _ => {}
    }
    Some(symbols)
}

/// Computes the BIP-380 checksum of a descriptor without its `#checksum` suffix.
pub fn checksum(desc: &str) -> Option<String> {
    let mut symbols = expand(desc)?;
    symbols.extend([0u64; 8]);
    let c = polymod(symbols) ^ 1;
    Some(
        (0..8)
            .map(|i| char::from(CHECKSUM_CHARSET[((c >> (5 * (7 - i))) & 31) as usize]))
            .collect(),
    )
}

/// Checks a descriptor from a policy file and returns its normal form (the text
/// without the `#checksum` suffix). A checksum, when present, must be correct.
pub(crate) fn normalize_checked(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("descriptor is empty".to_string());
    }
    if text.len() > MAX_DESCRIPTOR_LEN {
        return Err(format!(
            "descriptor is {} bytes, longer than the limit of {MAX_DESCRIPTOR_LEN}",
            text.len()
        ));
    }
    if text.chars().any(char::is_whitespace) {
        return Err("descriptor contains whitespace".to_string());
    }
    let (body, sum) = match text.split_once('#') {
        Some((b, s)) => (b, Some(s)),
        None => (text, None),
    };
    let Some(expected) = checksum(body) else {
        return Err("descriptor contains a character outside the descriptor character set".into());
    };
    if let Some(sum) = sum {
        if sum != expected {
            return Err(format!(
                "descriptor checksum `{sum}` is wrong (expected `{expected}`)"
            ));
        }
    }
    check_shape(body)?;
    Ok(body.to_string())
}

/// Minimal structural check: `name(...)` with balanced brackets.
fn check_shape(body: &str) -> Result<(), String> {
    let Some(open) = body.find('(') else {
        return Err("descriptor has no `(`; expected a form like `wpkh(...)`".into());
    };
    let name = &body[..open];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return Err(format!("descriptor function name `{name}` is not valid"));
    }
    let mut depth: i64 = 0;
    for (i, c) in body.char_indices() {
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("descriptor has an unbalanced `{c}` at byte {i}"));
                }
                if depth == 0 && i + c.len_utf8() != body.len() {
                    return Err("descriptor has text after its closing bracket".into());
                }
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("descriptor has unbalanced brackets".into());
    }
    Ok(())
}

/// Normal form of a descriptor supplied by the caller in a transaction view: the text
/// before any `#`. No validation; a malformed string simply matches nothing.
pub(crate) fn normalize_loose(text: &str) -> &str {
    text.split_once('#').map_or(text, |(b, _)| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_bip380_example() {
        // Example from BIP-380.
        assert_eq!(checksum("raw(deadbeef)").as_deref(), Some("89f8spxm"));
        assert_eq!(
            normalize_checked("raw(deadbeef)#89f8spxm").as_deref(),
            Ok("raw(deadbeef)")
        );
    }

    #[test]
    fn wrong_checksum_is_rejected() {
        assert_eq!(
            normalize_checked("raw(deadbeef)#89f8spxn"),
            Err("descriptor checksum `89f8spxn` is wrong (expected `89f8spxm`)".to_string())
        );
    }

    #[test]
    fn malformed_shapes_are_rejected() {
        assert!(normalize_checked("").is_err());
        assert!(normalize_checked("wpkh").is_err());
        assert!(normalize_checked("wpkh(abc").is_err());
        assert!(normalize_checked("wpkh(abc))").is_err());
        assert!(normalize_checked("wpkh(abc)x").is_err());
        assert!(normalize_checked("wpkh( abc)").is_err());
        assert!(normalize_checked("WPKH(abc)").is_err());
        assert!(normalize_checked("wpkh(é)").is_err());
        assert!(normalize_checked("sh(wpkh(abc))").is_ok());
    }

    #[test]
    fn loose_normal_form_drops_checksum() {
        assert_eq!(normalize_loose("wpkh(x)#abcdefgh"), "wpkh(x)");
        assert_eq!(normalize_loose("wpkh(x)"), "wpkh(x)");
    }
}
