//! What the tunnel targets share: the input read as operations
//! `[op][arg][len][bytes]...`, and a real message mutated by those bytes.

/// The operations in `data`: (op, arg, bytes), `bytes` at most `len` long.
pub fn ops(mut data: &[u8]) -> impl Iterator<Item = (u8, u8, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 3 {
            return None;
        }
        let (op, arg, n) = (data[0], data[1], usize::from(data[2]));
        let take = n.min(data.len() - 3);
        let bytes = &data[3..3 + take];
        data = &data[3 + take..];
        Some((op, arg, bytes))
    })
}

/// `real` with `bytes` xored in at places the bytes choose.
pub fn mutate(real: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut m = real.to_vec();
    for (i, b) in bytes.iter().enumerate() {
        let at = (usize::from(*b) + i * 31) % m.len().max(1);
        if let Some(x) = m.get_mut(at) {
            *x ^= bytes[(i + 1) % bytes.len()];
        }
    }
    m
}
