//! Key custody: the `KeyWrapper` abstraction, envelope encryption, secret memory.
