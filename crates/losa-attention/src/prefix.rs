//! The per-layer prefix KV cache with its page bounds.
//!
//! K and V live in `[batch, kv_heads, capacity, head_dim]` buffers that grow geometrically, so a
//! committed block is written in place instead of re-concatenating the whole cache. The page
//! bounds (per page, per KV head, per channel min/max of K) are kept beside them and updated
//! incrementally: a commit recomputes only the pages it touches (the last, possibly ragged, old
//! page and the new ones).

use burn::tensor::{Tensor, backend::Backend};

use crate::{
    LosaBackend,
    error::{LosaError, Result},
    ops,
};

/// A tensor with spare room along the sequence dimension (dim 2).
#[derive(Debug, Clone)]
struct GrowBuffer<B: Backend> {
    data: Tensor<B, 4>,
    len: usize,
}

impl<B: LosaBackend> GrowBuffer<B> {
    /// The filled rows, read in place where the backend can (see
    /// [`LosaBackend::losa_leading_rows`]: a `narrow` may copy them).
    fn view(&self) -> Tensor<B, 4> {
        ops::float(B::losa_leading_rows(ops::prim(self.data.clone()), self.len))
    }

    /// Room along the sequence dimension.
    fn capacity(&self) -> usize {
        self.data.dims()[2]
    }

    /// The buffer with room for at least `cap` rows (one copy of the rows held when it grows).
    fn reserve(self, cap: usize) -> Self {
        if self.capacity() >= cap {
            return self;
        }
        let keep = self.len;
        self.moved(cap, keep)
    }

    /// A fresh buffer of `cap` rows holding this one's first `keep` rows (`keep` ≤ len).
    fn moved(self, cap: usize, keep: usize) -> Self {
        let [b, h, _, d] = self.data.dims();
        let fresh =
            Tensor::<B, 4>::zeros([b, h, cap, d], &self.data.device()).cast(self.data.dtype());
        let data = if keep > 0 {
            fresh.slice_assign([0..b, 0..h, 0..keep, 0..d], self.view().narrow(2, 0, keep))
        } else {
            fresh
        };
        Self { data, len: keep }
    }

    /// Writes `rows` at sequence position `at` (≤ len), growing the buffer when needed: to
    /// twice its size (at least `min_grow`), but never past `max_cap` unless the rows need it,
    /// so that a long prompt does not reserve twice the model's positions.
    fn write(
        buffer: Option<Self>,
        rows: Tensor<B, 4>,
        at: usize,
        min_grow: usize,
        max_cap: usize,
    ) -> Self {
        let [b, h, n, d] = rows.dims();
        let needed = at + n;
        let old_cap = buffer.as_ref().map_or(0, Self::capacity);
        let cap = needed.max((old_cap * 2).max(min_grow).min(max_cap));
        let data = match buffer {
            Some(buf) if buf.capacity() >= needed => buf.data,
            Some(buf) => buf.moved(cap, at).data,
            None => Tensor::<B, 4>::zeros([b, h, cap, d], &rows.device()).cast(rows.dtype()),
        };
        let data = data.slice_assign([0..b, 0..h, at..needed, 0..d], rows);
        Self { data, len: needed }
    }
}

/// Prefix K/V of one layer and, when a page size is set, their page bounds.
#[derive(Debug, Clone)]
pub struct PrefixKv<B: Backend> {
    k: Option<GrowBuffer<B>>,
    v: Option<GrowBuffer<B>>,
    lo: Option<GrowBuffer<B>>,
    hi: Option<GrowBuffer<B>>,
    page_size: Option<usize>,
    max_len: usize,
    /// Tokens the buffers are made for at once (see [`Self::reserve`]); 0 when not known.
    reserved: usize,
}

impl<B: LosaBackend> PrefixKv<B> {
    /// An empty cache. `page_size` is the page size whose bounds to keep (`None` for dense
    /// attention); `max_len` is the most tokens it may hold (the model's positions).
    pub fn new(page_size: Option<usize>, max_len: usize) -> Result<Self> {
        if page_size == Some(0) {
            return Err(LosaError::InvalidConfig(
                "page_size must be at least 1".into(),
            ));
        }
        Ok(Self {
            k: None,
            v: None,
            lo: None,
            hi: None,
            page_size,
            max_len,
            reserved: 0,
        })
    }

    /// Makes room for `tokens` tokens in all (at most the positions), so that appends up to
    /// that length write in place: buffers not made yet are made that long, buffers made
    /// already grow to it now, once. Without it a buffer doubles when full, copying what it
    /// holds each time and holding up to twice what is written (a 64K prompt's first decoded
    /// block would reserve 128K positions of K/V: 18 GiB on SDAR-8B).
    pub fn reserve(&mut self, tokens: usize) {
        let tokens = tokens.min(self.max_len);
        self.reserved = self.reserved.max(tokens);
        self.k = self.k.take().map(|buf| buf.reserve(tokens));
        self.v = self.v.take().map(|buf| buf.reserve(tokens));
        if let Some(page) = self.page_size {
            let pages = tokens.div_ceil(page);
            self.lo = self.lo.take().map(|buf| buf.reserve(pages));
            self.hi = self.hi.take().map(|buf| buf.reserve(pages));
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |b| b.len)
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The page size the bounds are kept for.
    pub fn page_size(&self) -> Option<usize> {
        self.page_size
    }

    /// Keys `[batch, kv_heads, len, head_dim]`, `None` while empty.
    pub fn keys(&self) -> Option<Tensor<B, 4>> {
        self.k.as_ref().map(GrowBuffer::view)
    }

    /// Values `[batch, kv_heads, len, head_dim]`, `None` while empty.
    pub fn values(&self) -> Option<Tensor<B, 4>> {
        self.v.as_ref().map(GrowBuffer::view)
    }

    /// Page bounds `(lo, hi)`, each `[batch, kv_heads, ceil(len / page), head_dim]`; `None` while
    /// empty or without a page size.
    pub fn bounds(&self) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        Some((self.lo.as_ref()?.view(), self.hi.as_ref()?.view()))
    }

    /// Appends a committed block's K/V `[batch, kv_heads, n, head_dim]` and updates the bounds of
    /// the pages it touches.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Result<()> {
        if k.dims() != v.dims() {
            return Err(LosaError::ShapeMismatch {
                what: "append: v must have the shape of k".into(),
                got: v.dims().to_vec(),
                expected: k.dims().to_vec(),
            });
        }
        if let Some(old) = self.keys() {
            let [b, h, _, d] = old.dims();
            let [nb, nh, _, nd] = k.dims();
            if (nb, nh, nd) != (b, h, d) {
                return Err(LosaError::ShapeMismatch {
                    what: "append: new keys against the cached ones (batch, kv_heads, head_dim)"
                        .into(),
                    got: vec![nb, nh, nd],
                    expected: vec![b, h, d],
                });
            }
        }
        let old_len = self.len();
        let added = k.dims()[2];
        if old_len + added > self.max_len {
            return Err(LosaError::CapacityExceeded {
                needed: old_len + added,
                max: self.max_len,
            });
        }
        if added == 0 {
            return Ok(());
        }
        let grow = self.reserved.max(256);
        let cap = self.max_len;
        self.k = Some(GrowBuffer::write(self.k.take(), k, old_len, grow, cap));
        self.v = Some(GrowBuffer::write(self.v.take(), v, old_len, grow, cap));
        if let Some(page) = self.page_size {
            // Pages from the one holding the first new token onwards change; earlier ones do not.
            let first_page = old_len / page;
            let keys = self.keys().expect("keys were just written");
            let touched = keys.narrow(2, first_page * page, old_len + added - first_page * page);
            let (lo, hi) = ops::page_bounds(touched, page)?;
            let grow_pages = grow.div_ceil(page);
            let max_pages = self.max_len.div_ceil(page);
            self.lo = Some(GrowBuffer::write(
                self.lo.take(),
                lo,
                first_page,
                grow_pages,
                max_pages,
            ));
            self.hi = Some(GrowBuffer::write(
                self.hi.take(),
                hi,
                first_page,
                grow_pages,
                max_pages,
            ));
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;

    type B = burn_ndarray::NdArray<f32>;

    fn rows(n: usize, from: usize) -> Tensor<B, 4> {
        let values: Vec<f32> = (from..from + n * 4).map(|x| x as f32).collect();
        Tensor::<B, 1>::from_floats(values.as_slice(), &Default::default()).reshape([1, 1, n, 4])
    }

    /// A reserved cache is made that long at its first append and does not grow while the
    /// appends fit; a later, longer reservation grows it once and keeps what it holds, bounds
    /// included; no reservation passes the positions.
    #[test]
    fn reserved_room_is_made_once() {
        let mut kv = PrefixKv::<B>::new(Some(4), 1000).unwrap();
        kv.reserve(300);
        let caps = |kv: &PrefixKv<B>| {
            [&kv.k, &kv.v, &kv.lo, &kv.hi].map(|buf| buf.as_ref().map_or(0, GrowBuffer::capacity))
        };
        let mut written = 0;
        for n in [100, 100, 100] {
            kv.append(rows(n, written * 4), rows(n, written * 4))
                .unwrap();
            written += n;
            assert_eq!(caps(&kv), [300, 300, 75, 75], "after {written} tokens");
        }
        let (lo, hi) = kv.bounds().unwrap();
        kv.reserve(500);
        assert_eq!(caps(&kv), [500, 500, 125, 125]);
        let all: Vec<f32> = kv.keys().unwrap().into_data().to_vec().unwrap();
        assert_eq!(all, (0..300 * 4).map(|x| x as f32).collect::<Vec<_>>());
        let (lo2, hi2) = kv.bounds().unwrap();
        assert_eq!(lo2.into_data(), lo.into_data());
        assert_eq!(hi2.into_data(), hi.into_data());
        kv.append(rows(200, written * 4), rows(200, written * 4))
            .unwrap();
        assert_eq!(caps(&kv), [500, 500, 125, 125]);
        kv.reserve(5000);
        assert_eq!(caps(&kv), [1000, 1000, 250, 250]);
    }

    /// Doubling stops at the most tokens the cache may hold, and what was written stays.
    #[test]
    fn growth_stops_at_the_positions() {
        let mut kv = PrefixKv::<B>::new(Some(4), 600).unwrap();
        let mut written = 0;
        for n in [256, 200, 100, 44] {
            kv.append(rows(n, written * 4), rows(n, written * 4))
                .unwrap();
            written += n;
            let cap = kv.k.as_ref().unwrap().data.dims()[2];
            assert!(cap >= written && cap <= 600, "capacity {cap} for {written}");
        }
        assert_eq!(kv.len(), 600);
        let all: Vec<f32> = kv.keys().unwrap().into_data().to_vec().unwrap();
        assert_eq!(all, (0..600 * 4).map(|x| x as f32).collect::<Vec<_>>());
        assert!(
            kv.append(rows(1, 0), rows(1, 0)).is_err(),
            "past the positions"
        );
    }
}
