//! Polynomials, Lagrange coefficients and Feldman commitments over secp256k1.

use cggmp24::generic_ec::{NonZero, Point, Scalar, SecretScalar};
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

/// The curve of both key types.
pub(crate) type Curve = cggmp24::generic_ec::curves::Secp256k1;

/// A secret polynomial `f(x) = a_0 + a_1·x + ... + a_{d}·x^d`. Every coefficient is a
/// [`SecretScalar`] (heap copy zeroized on drop); `Debug` is redacted.
pub(crate) struct SecretPolynomial {
    coefs: Vec<SecretScalar<Curve>>,
}

impl std::fmt::Debug for SecretPolynomial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretPolynomial")
            .field("degree", &self.coefs.len().saturating_sub(1))
            .field("coefficients", &"<redacted>")
            .finish()
    }
}

impl SecretPolynomial {
    /// A random polynomial with `count` coefficients (degree `count - 1`) and the given
    /// constant term. Random coefficients are never zero, so no commitment is the point at
    /// infinity.
    pub(crate) fn random_with_constant<R: RngCore + CryptoRng>(
        rng: &mut R,
        constant: SecretScalar<Curve>,
        count: usize,
    ) -> Self {
        let mut coefs = Vec::with_capacity(count);
        coefs.push(constant);
        while coefs.len() < count {
            let c = SecretScalar::<Curve>::random(rng);
            if !AsRef::<Scalar<Curve>>::as_ref(&c).is_zero() {
                coefs.push(c);
            }
        }
        Self { coefs }
    }

    /// `f(x)` (Horner), as a secret scalar.
    pub(crate) fn eval(&self, x: &Scalar<Curve>) -> SecretScalar<Curve> {
        let mut acc = Zeroizing::new(Scalar::<Curve>::zero());
        for c in self.coefs.iter().rev() {
            *acc = *acc * x + c.as_ref();
        }
        SecretScalar::new(&mut acc)
    }

    /// Feldman commitments `a_k·G`.
    pub(crate) fn commitments(&self) -> Vec<Point<Curve>> {
        self.coefs.iter().map(|c| Point::generator() * c).collect()
    }
}

/// `Σ_k C_k·x^k` (Horner over points).
pub(crate) fn eval_commitments(commitments: &[Point<Curve>], x: &Scalar<Curve>) -> Point<Curve> {
    let mut acc = Point::<Curve>::zero();
    for c in commitments.iter().rev() {
        acc = acc * x + c;
    }
    acc
}

/// Lagrange coefficient at 0 of the point `xs[k]` within `xs`: `Π_{m≠k} x_m / (x_m − x_k)`.
/// `None` if two points coincide.
pub(crate) fn lagrange_at_zero(xs: &[Scalar<Curve>], k: usize) -> Option<Scalar<Curve>> {
    let xk = xs.get(k)?;
    let mut num = Scalar::<Curve>::one();
    let mut den = Scalar::<Curve>::one();
    for (m, xm) in xs.iter().enumerate() {
        if m == k {
            continue;
        }
        num *= xm;
        den *= *xm - xk;
    }
    Some(num * den.invert()?)
}

/// Evaluation point of the party with index `j` in a key made by this crate's keygen or by
/// a reshare: `I_j = j + 1`.
pub(crate) fn eval_point(j: u16) -> NonZero<Scalar<Curve>> {
    NonZero::from_scalar(Scalar::from(u32::from(j) + 1)).expect("j + 1 is at least 1, never zero")
}

/// Parses a 33-byte compressed point; refuses the point at infinity and non-canonical
/// encodings.
pub(crate) fn parse_point(bytes: &[u8; 33]) -> Option<NonZero<Point<Curve>>> {
    let p = Point::<Curve>::from_bytes(bytes).ok()?;
    if p.to_bytes(true).as_ref() != bytes.as_slice() {
        return None;
    }
    NonZero::from_point(p)
}

/// 33-byte compressed encoding of a non-zero point.
pub(crate) fn point_bytes(p: &Point<Curve>) -> Option<[u8; 33]> {
    if p.is_zero() {
        return None;
    }
    p.to_bytes(true).as_ref().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn interpolation_at_zero_recovers_the_constant() {
        let secret = SecretScalar::<Curve>::random(&mut OsRng);
        let f = SecretPolynomial::random_with_constant(&mut OsRng, secret.clone(), 3);
        let xs: Vec<Scalar<Curve>> = [2u16, 5, 7].iter().map(|&j| *eval_point(j)).collect();
        let mut acc = Scalar::<Curve>::zero();
        for (k, x) in xs.iter().enumerate() {
            acc += lagrange_at_zero(&xs, k).expect("distinct") * f.eval(x).as_ref();
        }
        assert_eq!(acc, *secret.as_ref());
        // commitments evaluate to the public value of each evaluation
        let c = f.commitments();
        for x in &xs {
            assert_eq!(eval_commitments(&c, x), Point::generator() * &f.eval(x));
        }
        assert!(lagrange_at_zero(&[xs[0], xs[0]], 0).is_none());
    }

    #[test]
    fn points_parse_only_in_canonical_compressed_form() {
        let p = Point::<Curve>::generator() * Scalar::<Curve>::from(5u32);
        let b = point_bytes(&p).expect("non-zero");
        assert_eq!(*parse_point(&b).expect("valid"), p);
        assert!(parse_point(&[0u8; 33]).is_none());
        let mut bad = b;
        bad[0] = 0x04;
        assert!(parse_point(&bad).is_none());
        assert!(point_bytes(&Point::zero()).is_none());
    }

    #[test]
    fn secret_polynomial_debug_is_redacted() {
        let f = SecretPolynomial::random_with_constant(&mut OsRng, SecretScalar::one(), 2);
        let d = format!("{f:?}");
        assert!(d.contains("redacted") && d.contains("degree: 1"), "{d}");
    }
}
