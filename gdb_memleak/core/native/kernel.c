/* gdb_memleak's compiled kernel: the two loops that run once per word or once per chunk of a
 * whole heap.  Built on first use with the system C compiler into a private per-user cache and
 * loaded with ctypes (gdb_memleak/core/native/__init__.py); when it cannot be built, or
 * GDB_MEMLEAK_NATIVE=0, the numpy/Python code gives the same results (tests/test_native.py).
 *
 * Plain C99, no headers beyond the C library's: any Linux host compiler will do.  Target words
 * are 4 or 8 bytes in either byte order (ws, swap); every read is a memcpy, so buffers need no
 * alignment.  No function keeps a pointer it was given, allocates or calls back into Python:
 * ctypes releases the GIL around each call, so scan threads run them in parallel.
 */
#include <stdint.h>
#include <string.h>

#define MLK_ABI 1

int mlk_abi(void) { return MLK_ABI; }

static inline uint64_t word_at(const unsigned char *p, int64_t i, int ws, int swap)
{
    if (ws == 8) {
        uint64_t v;
        memcpy(&v, p + (i << 3), 8);
        return swap ? __builtin_bswap64(v) : v;
    } else {
        uint32_t v;
        memcpy(&v, p + (i << 2), 4);
        return swap ? __builtin_bswap32(v) : v;
    }
}

#define GOLDEN 0x9E3779B97F4A7C15ULL

/* -- vtable census -------------------------------------------------------------------------
 * The address points are a set of words.  A word is a candidate when the bit of its 1 MiB
 * block (block number hashed to bbits bits) is set in ``bits``; a candidate is a hit when it is
 * a key of the open-addressing table (keys/vals, 2^kbits slots, linear probing, vals -1 = empty;
 * the value is the point's index).  Both tables are built by mlk_points_table. */

static inline int64_t probe(const uint64_t *keys, const int32_t *vals, int kbits, uint64_t w)
{
    uint64_t mask = (1ULL << kbits) - 1;
    uint64_t h = (w * GOLDEN) >> (64 - kbits);
    for (;;) {
        int32_t v = vals[h];
        if (v < 0)
            return -1;
        if (keys[h] == w)
            return v;
        h = (h + 1) & mask;
    }
}

/* Build the tables for ``n`` sorted, distinct points: bits has 2^bbits bits (zeroed by the
 * caller), keys/vals 2^kbits slots (vals set to -1 by the caller; 2^kbits >= 2n). */
void mlk_points_table(const uint64_t *points, int64_t n, uint64_t *bits, int bbits, int bshift,
                      uint64_t *keys, int32_t *vals, int kbits)
{
    uint64_t mask = (1ULL << kbits) - 1;
    for (int64_t i = 0; i < n; i++) {
        uint64_t w = points[i];
        uint64_t b = ((w >> bshift) * GOLDEN) >> (64 - bbits);
        bits[b >> 6] |= 1ULL << (b & 63);
        uint64_t h = (w * GOLDEN) >> (64 - kbits);
        while (vals[h] >= 0 && keys[h] != w)
            h = (h + 1) & mask;
        if (vals[h] < 0) {          /* the first of equal points keeps the slot (searchsorted's left) */
            keys[h] = w;
            vals[h] = (int32_t)i;
        }
    }
}

/* Candidates of 64 words at p as a bit mask: a word is a candidate when it lies in one of the nw
 * windows [lo, lo + span] (nw 1, 2 or 4: constants, so the loop vectorises), or, with nw 0,
 * when its hashed block's bit is set. */
static inline __attribute__((always_inline)) uint64_t block_mask(const unsigned char *p, int ws, int swap, int nw,
                                                                 const uint64_t *lo, const uint64_t *span,
                                                                 const uint64_t *bits, int bbits, int bshift)
{
    uint8_t m[64];
    uint64_t bm = 0;
    if (nw == 0) {
        for (int i = 0; i < 64; i++) {
            uint64_t w = word_at(p, i, ws, swap);
            uint64_t b = ((w >> bshift) * GOLDEN) >> (64 - bbits);
            m[i] = (uint8_t)((bits[b >> 6] >> (b & 63)) & 1);
        }
    } else if (ws == 8) {
        for (int i = 0; i < 64; i++) {
            uint64_t w = word_at(p, i, 8, swap);
            uint8_t ok = 0;
            for (int j = 0; j < nw; j++)
                ok |= (uint8_t)(w - lo[j] <= span[j]);
            m[i] = ok;
        }
    } else {
        uint32_t l32[4], s32[4];
        for (int j = 0; j < nw; j++) {
            l32[j] = (uint32_t)lo[j];
            s32[j] = (uint32_t)span[j];
        }
        for (int i = 0; i < 64; i++) {
            uint32_t w = (uint32_t)word_at(p, i, 4, swap);
            uint8_t ok = 0;
            for (int j = 0; j < nw; j++)
                ok |= (uint8_t)((uint32_t)(w - l32[j]) <= s32[j]);
            m[i] = ok;
        }
    }
    for (int i = 0; i < 64; i += 8) {       /* 8 bytes of 0/1 -> 8 bits */
        uint64_t x;
        memcpy(&x, m + i, 8);
        bm |= ((x * 0x0102040810204080ULL) >> 56) << i;
    }
    return bm;
}

static inline __attribute__((always_inline)) int64_t
census_body(const unsigned char *p, int64_t n, int ws, int swap, int nw, const uint64_t *lo, const uint64_t *span,
            const uint64_t *bits, int bbits, int bshift, const uint64_t *keys, const int32_t *vals, int kbits,
            int64_t *counts, int32_t *out_pos, int32_t *out_idx)
{
    int64_t nh = 0;
    int64_t i0 = 0;
    for (; i0 + 64 <= n; i0 += 64) {
        uint64_t bm = block_mask(p + i0 * ws, ws, swap, nw, lo, span, bits, bbits, bshift);
        while (bm) {
            int64_t i = i0 + __builtin_ctzll(bm);
            bm &= bm - 1;
            int64_t v = probe(keys, vals, kbits, word_at(p, i, ws, swap));
            if (v >= 0) {
                if (counts)
                    counts[v]++;
                if (out_pos) {
                    out_pos[nh] = (int32_t)i;
                    out_idx[nh] = (int32_t)v;
                }
                nh++;
            }
        }
    }
    for (int64_t i = i0; i < n; i++) {      /* the tail: every word probed */
        int64_t v = probe(keys, vals, kbits, word_at(p, i, ws, swap));
        if (v >= 0) {
            if (counts)
                counts[v]++;
            if (out_pos) {
                out_pos[nh] = (int32_t)i;
                out_idx[nh] = (int32_t)v;
            }
            nh++;
        }
    }
    return nh;
}

#define CENSUS_ARGS const unsigned char *p, int64_t n, const uint64_t *lo, const uint64_t *span, \
    const uint64_t *bits, int bbits, int bshift, const uint64_t *keys, const int32_t *vals, int kbits, \
    int64_t *counts, int32_t *out_pos, int32_t *out_idx
#define CENSUS_PASS p, n, lo, span, bits, bbits, bshift, keys, vals, kbits, counts, out_pos, out_idx
#define CENSUS_VARIANT(name, attr, ws, swap, nw) \
    attr static int64_t name(CENSUS_ARGS) { return census_body(p, n, ws, swap, nw, lo, span, bits, bbits, bshift, \
                                                                keys, vals, kbits, counts, out_pos, out_idx); }
#define NOATTR
CENSUS_VARIANT(c8_0, NOATTR, 8, 0, 0)
CENSUS_VARIANT(c8_1, NOATTR, 8, 0, 1)
CENSUS_VARIANT(c8_2, NOATTR, 8, 0, 2)
CENSUS_VARIANT(c8_4, NOATTR, 8, 0, 4)
CENSUS_VARIANT(c4_0, NOATTR, 4, 0, 0)
CENSUS_VARIANT(c4_4, NOATTR, 4, 0, 4)
CENSUS_VARIANT(s8_0, NOATTR, 8, 1, 0)
CENSUS_VARIANT(s8_4, NOATTR, 8, 1, 4)
CENSUS_VARIANT(s4_0, NOATTR, 4, 1, 0)
CENSUS_VARIANT(s4_4, NOATTR, 4, 1, 4)
#if defined(__x86_64__) && defined(__GNUC__)
#define AVX2 __attribute__((target("avx2")))
CENSUS_VARIANT(a8_1, AVX2, 8, 0, 1)
CENSUS_VARIANT(a8_2, AVX2, 8, 0, 2)
CENSUS_VARIANT(a8_4, AVX2, 8, 0, 4)
CENSUS_VARIANT(a4_4, AVX2, 4, 0, 4)
static int have_avx2(void) { return __builtin_cpu_supports("avx2"); }
#else
static int have_avx2(void) { return 0; }
#endif

/* Which loop mlk_census runs (for status lines and tests): 1 with AVX2, 0 plain C. */
int mlk_simd(void) { return have_avx2(); }

/* Words data[0..n) (n < 2^31): every word equal to an address point.  Candidates are words in
 * one of the nw windows [lo[j], lo[j] + span[j]] (nw 1..4; the caller guarantees every point
 * lies in one), or, with nw 0, words whose block bit is set.  With counts, counts[point] is
 * incremented per hit; with out_pos/out_idx (room for n), the hits' word positions and point
 * indices are written in address order.  Returns the number of hits.  simd 0 forces the plain
 * loop (tests). */
int64_t mlk_census(const void *data, int64_t n, int ws, int swap, int nw, const uint64_t *lo, const uint64_t *span,
                   const uint64_t *bits, int bbits, int bshift,
                   const uint64_t *keys, const int32_t *vals, int kbits,
                   int64_t *counts, int32_t *out_pos, int32_t *out_idx, int simd)
{
    const unsigned char *p = (const unsigned char *)data;
    uint64_t l4[4], s4[4];
    if (nw < 0 || nw > 4)
        nw = 0;
    if (nw == 3) {                          /* pad to 4 with a copy: the same set */
        for (int j = 0; j < 3; j++) {
            l4[j] = lo[j];
            s4[j] = span[j];
        }
        l4[3] = lo[0];
        s4[3] = span[0];
        lo = l4;
        span = s4;
        nw = 4;
    }
    if (ws == 4 && nw > 0 && nw < 4) {      /* 32-bit words: one variant, 4 windows */
        for (int j = 0; j < 4; j++) {
            l4[j] = lo[j < nw ? j : 0];
            s4[j] = span[j < nw ? j : 0];
        }
        lo = l4;
        span = s4;
        nw = 4;
    }
    if (swap && nw > 0 && nw < 4) {
        for (int j = 0; j < 4; j++) {
            l4[j] = lo[j < nw ? j : 0];
            s4[j] = span[j < nw ? j : 0];
        }
        lo = l4;
        span = s4;
        nw = 4;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    if (simd && !swap && nw > 0 && have_avx2()) {
        if (ws == 4)
            return a4_4(CENSUS_PASS);
        return nw == 1 ? a8_1(CENSUS_PASS) : nw == 2 ? a8_2(CENSUS_PASS) : a8_4(CENSUS_PASS);
    }
#endif
    if (!swap) {
        if (ws == 4)
            return nw ? c4_4(CENSUS_PASS) : c4_0(CENSUS_PASS);
        return nw == 0 ? c8_0(CENSUS_PASS) : nw == 1 ? c8_1(CENSUS_PASS) : nw == 2 ? c8_2(CENSUS_PASS) : c8_4(CENSUS_PASS);
    }
    if (ws == 4)
        return nw ? s4_4(CENSUS_PASS) : s4_0(CENSUS_PASS);
    return nw ? s8_4(CENSUS_PASS) : s8_0(CENSUS_PASS);
}

/* For hits at sorted addresses ``where[0..n)``: the heap chunk holding each (chunks sorted by
 * address: caddr, csize; cfree 0 = in use) and what the hit is there:
 *   0 outside every chunk, 1 at an in-use chunk's user start (caddr + user_off),
 *   2 elsewhere in an in-use chunk, 3 in a free chunk.
 * owner[k] is the chunk's index (or -1 when outside).  A merge walk: O(n + chunks passed). */
void mlk_owners(const uint64_t *where, int64_t n, const uint64_t *caddr, const uint64_t *csize,
                const int8_t *cfree, int64_t nchunks, uint64_t user_off, int64_t *owner, uint8_t *what)
{
    int64_t j = -1;     /* the last chunk whose address is <= the current hit */
    if (n == 0)
        return;
    /* binary search for the first hit */
    {
        int64_t lo = 0, hi = nchunks;          /* first index with caddr > where[0] */
        while (lo < hi) {
            int64_t mid = lo + (hi - lo) / 2;
            if (caddr[mid] <= where[0])
                lo = mid + 1;
            else
                hi = mid;
        }
        j = lo - 1;
    }
    for (int64_t k = 0; k < n; k++) {
        uint64_t a = where[k];
        while (j + 1 < nchunks && caddr[j + 1] <= a)
            j++;
        if (j >= 0 && a - caddr[j] < csize[j]) {
            owner[k] = j;
            if (cfree[j])
                what[k] = 3;
            else
                what[k] = a == caddr[j] + user_off ? 1 : 2;
        } else {
            owner[k] = -1;
            what[k] = 0;
        }
    }
}

/* The census at chunk start for one chunk of memory at address ``addr``: the hits as mlk_census
 * finds them (pos/idx: scratch with room for n), then each hit's heap chunk (chunks sorted by
 * address: caddr, csize, cfree 0 = in use; a merge walk from a binary search):
 *   in a free chunk: ignored;  else hits[point]++;
 *   at an in-use chunk's user start (caddr + user_off): starts[point]++, and for a primary
 *   point the (point, chunk size) pair is tallied in the table tkeys/tcounts (2^tbits slots,
 *   key point << 40 | size, count 0 = empty slot), or, once the table is half full, appended
 *   to ovf (room for n; *novf is its length: the caller tallies those).
 * Returns the number of live hits. */
int64_t mlk_census_heap(const void *data, int64_t n, uint64_t addr, int ws, int swap, int nw,
                        const uint64_t *lo, const uint64_t *span, const uint64_t *bits, int bbits, int bshift,
                        const uint64_t *keys, const int32_t *vals, int kbits, int simd,
                        int32_t *pos, int32_t *idx, const uint8_t *primary,
                        const uint64_t *caddr, const uint64_t *csize, const int8_t *cfree, int64_t nchunks,
                        uint64_t user_off, int64_t *hits, int64_t *starts,
                        uint64_t *tkeys, int64_t *tcounts, int tbits, int64_t *tused, uint64_t *ovf, int64_t *novf)
{
    int64_t nh = mlk_census(data, n, ws, swap, nw, lo, span, bits, bbits, bshift, keys, vals, kbits, NULL, pos, idx, simd);
    int64_t live = 0;
    uint64_t tmask = (1ULL << tbits) - 1;
    int64_t j;
    if (nh == 0)
        return 0;
    {
        uint64_t a0 = addr + (uint64_t)pos[0] * (uint64_t)ws;
        int64_t lo_ = 0, hi_ = nchunks;     /* first chunk with caddr > a0 */
        while (lo_ < hi_) {
            int64_t mid = lo_ + (hi_ - lo_) / 2;
            if (caddr[mid] <= a0)
                lo_ = mid + 1;
            else
                hi_ = mid;
        }
        j = lo_ - 1;
    }
    for (int64_t k = 0; k < nh; k++) {
        uint64_t a = addr + (uint64_t)pos[k] * (uint64_t)ws;
        int32_t v = idx[k];
        while (j + 1 < nchunks && caddr[j + 1] <= a)
            j++;
        if (j >= 0 && a - caddr[j] < csize[j]) {
            if (cfree[j])
                continue;
            hits[v]++;
            live++;
            if (a == caddr[j] + user_off) {
                starts[v]++;
                if (primary[v]) {
                    uint64_t key = ((uint64_t)v << 40) | csize[j];
                    uint64_t h = (key * GOLDEN) >> (64 - tbits);
                    for (;;) {
                        if (tcounts[h] == 0) {
                            if (2 * (*tused + 1) > (int64_t)(tmask + 1)) {
                                ovf[(*novf)++] = key;
                                break;
                            }
                            tkeys[h] = key;
                            tcounts[h] = 1;
                            (*tused)++;
                            break;
                        }
                        if (tkeys[h] == key) {
                            tcounts[h]++;
                            break;
                        }
                        h = (h + 1) & tmask;
                    }
                }
            }
        } else {
            hits[v]++;
            live++;
        }
    }
    return live;
}

/* -- heap chunk walk -------------------------------------------------------------------------
 * Step chunk headers through one window of the heap (nwords words at address base) from word
 * index i while i < iend (the caller's bound: the window's last header and the walk's end).
 * A header is prev_size at i, the size word at i + 1.  Each chunk that passes is recorded
 * (address, size without flag bits, its own PREV_INUSE).  Stops (state[1]):
 *   0  i >= iend (the window or the walk's end is reached);
 *   1  a size below minsize at i (a fencepost when it is CHUNK_HDR_SZ);
 *   2  a size that cannot be at i: not a multiple of align (a power of two) or IS_MMAPPED set,
 *      unless ``shape`` and the chunk ends exactly at ``end`` (shape mode's top);
 *   3  ``cap`` chunks recorded (call again from state[0]).
 * state[0] = the final i, state[2] = the raw size word at i for stops 1 and 2.  Returns the
 * number of chunks recorded.  i may run far past iend (a wild size): it is an int64 word index
 * and never used to read. */
static inline int64_t walk_body(const unsigned char *p, int64_t nwords, int ws, int swap, int64_t i, int64_t iend,
                             uint64_t base, uint64_t minsize, uint64_t align, int shape, uint64_t end,
                             uint64_t *out_addr, uint64_t *out_size, uint8_t *out_pbit, int64_t cap,
                             int64_t *state)
{
    int shift = ws == 8 ? 3 : 2;
    int64_t k = 0;
    int stop = 0;
    uint64_t raw = 0;
    if (iend > nwords - 1)
        iend = nwords - 1;
    while (i < iend) {
        if (k >= cap) {
            stop = 3;
            break;
        }
        raw = word_at(p, i + 1, ws, swap);
        uint64_t s = raw & ~(uint64_t)7;
        if (s < minsize) {
            stop = 1;
            break;
        }
        uint64_t addr = base + ((uint64_t)i << shift);
        if (((s & (align - 1)) != 0 || (raw & 2) != 0) && !(shape && addr + s == end)) {
            stop = 2;
            break;
        }
        out_addr[k] = addr;
        out_size[k] = s;
        out_pbit[k] = (uint8_t)(raw & 1);
        k++;
        uint64_t step = s >> shift;
        if (step > (uint64_t)(INT64_MAX / 2))   /* far past any window: the caller sees i > iend */
            step = INT64_MAX / 2;
        i += (int64_t)step;
    }
    state[0] = i;
    state[1] = stop;
    state[2] = (int64_t)raw;
    return k;
}

int64_t mlk_walk(const void *buf, int64_t nwords, int ws, int swap, int64_t i, int64_t iend,
              uint64_t base, uint64_t minsize, uint64_t align, int shape, uint64_t end,
              uint64_t *out_addr, uint64_t *out_size, uint8_t *out_pbit, int64_t cap, int64_t *state)
{
    const unsigned char *p = (const unsigned char *)buf;
    if (ws == 8 && !swap)
        return walk_body(p, nwords, 8, 0, i, iend, base, minsize, align, shape, end, out_addr, out_size, out_pbit, cap, state);
    if (ws == 4 && !swap)
        return walk_body(p, nwords, 4, 0, i, iend, base, minsize, align, shape, end, out_addr, out_size, out_pbit, cap, state);
    if (ws == 8)
        return walk_body(p, nwords, 8, 1, i, iend, base, minsize, align, shape, end, out_addr, out_size, out_pbit, cap, state);
    return walk_body(p, nwords, 4, 1, i, iend, base, minsize, align, shape, end, out_addr, out_size, out_pbit, cap, state);
}
