/* Compiled per-bit predict/update of ContextMixPredictor (model/context_mix.py).
 *
 * Why: the numpy implementation makes about 80 numpy calls per bit, so a lockstep step
 * costs ~250 us whatever B is (~27 KB/s at B = 64); the loop over streams done here in C
 * costs a few us per step. The numpy code stays the reference: tests/test_cm_kernel.py
 * checks that both give identical tables and identical state, bit for bit.
 *
 * The kernel owns no state. A Kernel object is bound (by ContextMixPredictor.begin) to
 * the predictor's own numpy arrays through the buffer protocol, keeps a reference to
 * them, and reads and writes them in place; the Python object stays the single owner of
 * the state, its checks and its descriptor. Rebinding after every begin/reset is the
 * caller's job (those allocate new arrays).
 *
 * Exactness notes (each mirrors one numpy operation of context_mix.py):
 * - every number is int64 / uint64 as in numpy; sums of products that numpy forms with
 *   np.einsum on int64 wrap modulo 2**64, so they are formed in uint64 here (signed
 *   overflow is undefined in C) and converted back;
 * - numpy's >> on int64 is an arithmetic shift (floor). C leaves >> of a negative
 *   signed value implementation-defined; gcc and clang define it as arithmetic, which is
 *   what ASR() relies on (checked by a static test below). << of a negative value is
 *   done in uint64 (numpy's result is the two's-complement one);
 * - x & mask on a negative int64 is two's complement in numpy and in C (C23; gcc always);
 * - shared-table updates: every delta depends only on the values read by predict (kept
 *   in the per-stream val/pcl/x/p12 buffers), never on the table as it is being updated,
 *   so adding them one stream after the other gives exactly np.add.at's sum (integer
 *   addition commutes);
 * - the match table: numpy gathers the candidates of all streams, then applies
 *   np.maximum.at; here likewise, in two passes; the history bytes of all streams are
 *   written before any stream reads the history, as numpy does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_engine_step.h"

#if (-1 >> 1) != -1
#error "this kernel needs an arithmetic >> on negative signed integers (as numpy's)"
#endif

typedef int64_t i64;
typedef uint64_t u64;

#define P_BITS 22
#define P_MAX ((1 << P_BITS) - 1)
#define N_BITS 10
#define N_MASK ((1 << N_BITS) - 1)
#define APM_POINTS 24
#define MAX_FIELD 63
#define H1 0x9E3779B97F4A7C15ULL
#define H2 0xC2B2AE3D27D4EB4FULL
#define H3 0x165667B19E3779F9ULL
#define TEMPLATE_DIGITS 0x1234 /* what a digit run adds to the template hash */

/* Context kinds (the `kinds` parameter): each context's position in CONTEXT_NAMES
 * (context_mix.py), 0..6 order-k, then the log-structure ones. */
enum { K_WORD = 7, K_BIGRAM = 8, K_COLUMN = 9, K_FIELD = 10, K_SPARSE = 11, K_O8 = 12,
       K_LINEPOS = 13, K_SHAPE = 14, K_ABOVE2 = 15, K_SHAPEFIELD = 16, K_TEMPLATE = 17,
       K_IND2 = 18, K_MATCHBYTE = 19, K_PTEMPLATE = 20, K_FIELDABOVE = 21, K_TMPLABOVE = 22,
       K_TOKABOVE = 23, K_TMPLCMP = 24, K_TOKCMP = 25, K_KEYVALUE = 26, K_TOKRUN = 27,
       K_IND1 = 28, K_IND4 = 29, K_ALIGN = 30, K_TMPLNEXT = 31, K_WORDGAP = 32,
       K_BLOCKWORD = 33, K_CHARMASK = 34, K_GAPWORDS = 35, K_KEYWORD = 36, K_TMPLNEXT2 = 37,
       K_MATCHBYTE3 = 38, K_WORDSKIP = 39, K_HEADABOVE = 40, K_BLANKPOS = 41,
       K_LAST = K_BLANKPOS };
#define HEAD_BYTES 52 /* headabove: a line's head, its first bytes (HEAD_BYTES in context_mix.py) */
#define ALIGN_MIN 4 /* align: a run this long is a repeat worth waiting for */
#define ALIGN_WAIT 32 /* ... for this many bytes, before it takes the match model's */
#define APM3_SIZE 65536 /* apm_match: contexts of the third APM (a 16-bit hash) */
#define APM4_SIZE 4096 /* apm_miss: contexts of the fourth APM (partial byte, miss state) */
#define IND4_BITS 18 /* ind4's table, by a hash of the last four bytes (IND4_BITS) */
#define IND2_SIZE 65536 /* the indirect table: one entry per pair of bytes */
#define FTAB_BITS 18 /* the field table of tmplabove (FTAB_BITS in context_mix.py) */
#define TTAB_BITS 18 /* the token table of tokabove (TTAB_BITS) */
#define KTAB_BITS 18 /* the key table of keyvalue (KTAB_BITS) */
#define NTAB_BITS 18 /* tmplnext's value and successor tables (NTAB_BITS) */
enum { N2_FS, N2_B, N2_CMP, NEXT2_COLS }; /* tmplnext2's per-stream state (NEXT2_COLS) */
/* the per-stream text state (TEXT_COLS in context_mix.py): the case-folded word so far
 * (0 between words), the two words before it, the gap before it and the one before that,
 * the last four bytes as classes, the last word before a ':' or '=' */
enum { T_W0, T_W1, T_W2, T_G0, T_G1, T_MASK, T_KEY, TEXT_COLS };

/* Byte classes of the "shape" context (BYTE_CLASS in context_mix.py): digit 0, upper 1,
 * lower 2, space 3, newline 4, other printable ASCII 5, control 6, >= 128 7. */
static uint8_t BYTECLASS[256];
static void init_byteclass(void) {
    for (int c = 0; c < 256; c++)
        BYTECLASS[c] = c >= '0' && c <= '9' ? 0 : c >= 'A' && c <= 'Z' ? 1
                     : c >= 'a' && c <= 'z' ? 2 : c == ' ' ? 3 : c == '\n' ? 4
                     : c > 32 && c < 127 ? 5 : c < 128 ? 6 : 7;
}

static inline i64 asr(i64 v, int s) { return v >> s; } /* arithmetic on gcc/clang */
static inline i64 shl(i64 v, int s) { return (i64)((u64)v << s); }
static inline i64 clip_p(i64 v) {
    v = asr(v, N_BITS);
    return v < 0 ? 0 : (v > P_MAX ? P_MAX : v);
}
/* A counter's step toward bit y: from entry v (probability p, clipped), p moves by
 * 1/(count + offset) (the recip table of that offset), the count grows up to lim. */
static inline i64 counter_delta(i64 v, i64 p, i64 y, const i64 *recip, i64 lim) {
    i64 cnt = v & N_MASK;
    return shl(asr(((y << P_BITS) - p) * recip[cnt], 16), N_BITS) + (cnt < lim);
}

/* apm_match's and apm_miss's tables (APM_POINTS per context): the two points around the
 * mixer's stretch value from first point a, kept in val for update, interpolated by wt
 * (in 4096ths) */
static inline u64 apm_pair_read(const i64 *tab, i64 a, i64 wt, i64 val[2]) {
    val[0] = tab[a];
    val[1] = tab[a + 1];
    return (u64)clip_p(val[0]) * (u64)(4096 - wt) + (u64)clip_p(val[1]) * (u64)wt;
}
/* ... and their step toward bit y, from the values predict read */
static inline void apm_pair_update(i64 *tab, i64 a, const i64 val[2], i64 y, const i64 *recip,
                                   i64 lim) {
    for (int m = 0; m < 2; m++)
        ((u64 *)tab)[a + m] += (u64)counter_delta(val[m], clip_p(val[m]), y, recip, lim);
}

/* The arrays, in the order of the tuple given to Kernel(): name, item size, items per
 * stream (0: a fixed count given in need[] at bind time). */
enum {
    A_T, A_C0, A_C0N, A_H8, A_WORDH, A_PWORD, A_COL, A_FIELD, A_LINE, A_PLINE, A_ABOVE,
    A_HIST, A_MTAB, A_MLEN, A_MPTR, A_MOK, A_IDX, A_VAL, A_PCL, A_X, A_WBASE, A_BLK,
    A_ABASE, A_CTXV, A_EBIT, A_MIDX, A_WSEL, A_WSEL2, A_P12,
    /* constants */
    A_STRETCH, A_SQUASH, A_RECIP, A_MBUCKET, A_WORDBYTE, A_LIM, A_CTXOFF, A_KINDS,
    A_SELOFF, A_SELKINDS, A_TMPL, A_IND2, A_RECIPAPM, A_PTMPL, A_CFIELDS, A_PFIELDS,
    A_FTAB, A_TFS, A_TAB, A_TTAB, A_TKS, A_TKC, A_TOB, A_TABCMP, A_TOKCMP,
    A_TOKSEP, A_TOKDIFFS, A_KTAB, A_KVC, A_KVB, A_KVCMP, A_IND1, A_IND4, A_ALIGN, A_APM3,
    A_APM4, A_MISSES, A_VTAB, A_NTAB, A_NVAL, A_NKEY, A_NFS, A_NB, A_NCMP, A_TEXT, A_VTAB2,
    A_NTAB2, A_NEXT2, A_LHEAD, A_BLANK, N_ARRAYS
};
static const char *array_names[N_ARRAYS] = {
    "t", "c0", "c0n", "h8", "wordh", "pword", "col", "field", "line", "pline", "above",
    "hist", "mtab", "mlen", "mptr", "mok", "idx", "val", "pcl", "x", "wbase", "blk",
    "abase", "ctx_vals", "ebit", "midx", "wsel", "wsel2", "p12",
    "STRETCH", "SQUASH", "RECIP", "MATCH_BUCKET", "WORD_BYTE", "lim", "ctx_off", "kinds",
    "sel_off", "sel_kinds", "tmpl", "ind2", "recip_apm", "ptmpl", "cfields", "pfields",
    "ftab", "tfs", "tab", "ttab", "tks", "tkc", "tob", "tabcmp", "tokcmp",
    "toksep", "tokdiffs", "ktab", "kvc", "kvb", "kvcmp", "ind1", "ind4", "align", "apm3",
    "apm4", "misses", "vtab", "ntab", "nval", "nkey", "nfs", "nb", "ncmp", "text", "vtab2",
    "ntab2", "next2", "lhead", "blank",
};

/* Extra mixer weight-set selectors (the `sel_kinds` parameter): positions in
 * MIXER_SELECTORS (context_mix.py), with their numbers of values. */
enum { S_FIELD, S_COLUMN, S_SHAPE2, S_BYTE2, S_ABOVE, S_MATCH, S_TABOVE, S_LAST = S_TABOVE };

/* Integer parameters, in the order of the second tuple. */
enum {
    P_B, P_NC, P_NI, P_NCOLS, P_CAPM, P_CW, P_MATCHOFF, P_WOFF, P_TABLEBITS, P_MIXSHIFT,
    P_RINGBITS, P_MATCHMIN, P_MHASHBITS, P_TABLESIZE, P_NSETS, P_NEXT, P_EXTW,
    P_SLOTCHECK, P_POS0, P_MIXDECAY, P_APM3, P_APM4, P_XRATE, P_FINALMIN,
    N_PARAMS
};

typedef struct {
    PyObject_HEAD
    Py_buffer buf[N_ARRAYS];
    int held[N_ARRAYS];
    i64 prm[N_PARAMS];
    /* typed views of buf[] */
    i64 *t, *c0, *c0n, *col, *field, *line, *pline, *above, *mtab, *mlen, *mptr;
    u64 *h8, *wordh, *pword, *ctxv, *tmpl, *ptmpl;
    /* field starts (columns) of the current and the previous line, (b, MAX_FIELD + 1) */
    i64 *cfields, *pfields;
    /* tmplabove: the field table, (pos + 1) << 16 | row of a field's start by the line's
     * template up to it, and each stream's entry for its current field */
    i64 *ftab, *tfs, *tab; /* tab: the byte tmplabove predicts (256: none) */
    int uses_ftab;
    /* tokabove: the token table, each stream's current token start (column) and entry */
    i64 *ttab, *tks, *tkc;
    int uses_ttab;
    /* tmplcmp / tokcmp: the byte tokabove predicts (256: none), and how the current field
     * and token compare so far with the bytes tmplabove and tokabove predicted for them
     * (CMP_* below) */
    i64 *tob, *tabcmp, *tokcmp;
    int uses_tabcmp, uses_tokcmp;
    /* tokrun: the byte that opened the current token, the run of unequal tokens before it */
    i64 *toksep, *tokdiffs;
    int uses_tokrun;
    /* keyvalue: the key table, each stream's entry, the byte it predicts, the comparison */
    i64 *ktab, *kvc, *kvb, *kvcmp;
    int uses_ktab;
    i64 *ind2; /* IND2_SIZE entries, shared: the last two bytes that followed each pair */
    int uses_ind2; /* the ind2 context is one of the kinds: only then is ind2 kept up */
    /* shared like ind2: the last three bytes that followed each byte (256 entries), and
     * the last two that followed each last-four-bytes hash (1 << IND4_BITS) */
    i64 *ind1, *ind4;
    int uses_ind1, uses_ind4;
    /* align: per stream (4 each) its pointer (-1: none), run, wait, anchor */
    i64 *align;
    int uses_align;
    /* apm_match: the third APM's table (APM3_SIZE contexts of APM_POINTS), and per
     * stream the first point predict read and both values (for update) */
    i64 *apm3, *a3idx, *a3val;
    /* apm_miss: the fourth APM's table (APM4_SIZE contexts of APM_POINTS), per stream the
     * history of mispredicted bits (newest lowest), and per step the first point predict
     * read and the final probability (for update) */
    i64 *apm4, *misses, *a4idx, *a4val, *p16last;
    /* tmplnext: the value table (by template up to a field: the hash of its last value)
     * and the successor table (by that key and value: where the next field began); per
     * stream the field's value so far, its value-table key (-1: none), its successor
     * entry, the byte that predicts (256: none), how the field compares so far */
    u64 *vtab, *nval;
    i64 *ntab, *nkey, *nfs, *nb, *ncmp;
    int uses_ntab;
    i64 *nwkey, *skey; /* per-stream scratch: the value-table write, the successor key */
    /* tmplnext2: the value before the last by the same key, the second-order successor
     * table (by the key and both values), and per stream (NEXT2_COLS) its entry, the byte
     * it predicts, how the field compares; the successor key (scratch) */
    u64 *vtab2;
    i64 *ntab2, *next2, *skey2;
    int uses_ntab2;
    /* wordgap, blockword, charmask, gapwords, keyword: per stream TEXT_COLS words
     * (text_step) */
    u64 *text;
    int uses_text;
    /* headabove: per stream the template of this line's head and of the line above's */
    u64 *lhead;
    int uses_lhead;
    /* blankpos: per stream whether this line is blank so far (spaces and tabs) */
    i64 *blank;
    int uses_blank;
    u64 *nwval;
    i64 *xkey, *xval; /* per stream, 2 each: ind1's and ind4's updates */
    uint8_t *hist, *mok, *wordbyte;
    i64 *idx, *val, *pcl, *x, *wbase, *blk, *abase, *ebit, *midx, *wsel, *wsel2, *p12;
    i64 *stretch, *squash, *recip, *recip_apm, *mbucket, *lim, *ctxoff, *kinds, *seloff, *selkinds;
    /* per-stream scratch of the match lookup and the indirect table's update (n <= b) */
    i64 *key, *ikey, *ival, *fkey, *tkey, *kkey;
    /* per-stream scratch of the whole-frame loops: P(1) and the step's bits */
    i64 *scratch, *y;
    /* The external input (P_NEXT = 1): tables (B, ext_k, 256) int64 (each entry in
     * [0, 2**32), checked by the caller) or uint32 (an engine's, read in place) of the
     * bytes ext_first .. ext_first + ext_k - 1, bound by set_ext. */
    Py_buffer ext;
    int ext_held, ext_u32;
    i64 ext_k, ext_first;
    /* decode_run with a stepper: the uint32 tables of byte ext_first, in place of ext's
     * (the bound array or the speculative step's spare); NULL otherwise */
    const uint32_t *ext_tab;
} Kernel;

static void Kernel_dealloc(Kernel *self) {
    for (int i = 0; i < N_ARRAYS; i++)
        if (self->held[i]) PyBuffer_Release(&self->buf[i]);
    if (self->ext_held) PyBuffer_Release(&self->ext);
    PyMem_Free(self->key);
    PyMem_Free(self->ikey);
    PyMem_Free(self->ival);
    PyMem_Free(self->a3idx);
    PyMem_Free(self->a3val);
    PyMem_Free(self->a4idx);
    PyMem_Free(self->a4val);
    PyMem_Free(self->p16last);
    PyMem_Free(self->xkey);
    PyMem_Free(self->xval);
    PyMem_Free(self->fkey);
    PyMem_Free(self->tkey);
    PyMem_Free(self->kkey);
    PyMem_Free(self->nwkey);
    PyMem_Free(self->skey);
    PyMem_Free(self->skey2);
    PyMem_Free(self->nwval);
    PyMem_Free(self->scratch);
    PyMem_Free(self->y);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Kernel_init(Kernel *self, PyObject *args, PyObject *kw) {
    PyObject *arrays, *params;
    if (!PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &arrays, &PyTuple_Type, &params))
        return -1;
    if (PyTuple_GET_SIZE(arrays) != N_ARRAYS || PyTuple_GET_SIZE(params) != N_PARAMS) {
        PyErr_Format(PyExc_ValueError, "Kernel needs %d arrays and %d parameters", N_ARRAYS,
                     N_PARAMS);
        return -1;
    }
    for (int i = 0; i < N_PARAMS; i++) {
        self->prm[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(params, i));
        if (self->prm[i] == -1 && PyErr_Occurred()) return -1;
    }
    i64 b = self->prm[P_B], nc = self->prm[P_NC], ni = self->prm[P_NI];
    i64 ncols = self->prm[P_NCOLS], cw = self->prm[P_CW], ns = self->prm[P_NSETS];
    i64 next = self->prm[P_NEXT];
    if (b < 0 || b > 65536 || nc < 1 || nc > K_LAST + 1 || next < 0 || next > 1 ||
        ni != nc + 2 || cw != nc + 5 || self->prm[P_EXTW] < 0 ||
        self->prm[P_EXTW] + 256 * next > self->prm[P_TABLESIZE] ||
        ns < 2 || ns > S_LAST + 3 || ncols != cw + ns * ni + next || self->prm[P_CAPM] != nc + 1 || self->prm[P_RINGBITS] < 1 ||
        self->prm[P_RINGBITS] > 40 || self->prm[P_MHASHBITS] < 1 || self->prm[P_MHASHBITS] > 40 ||
        self->prm[P_MATCHMIN] < 1 || self->prm[P_MATCHMIN] > 8 || self->prm[P_MIXSHIFT] < 1 ||
        self->prm[P_MIXSHIFT] > 40 || self->prm[P_TABLEBITS] < 5 || self->prm[P_TABLEBITS] > 40 ||
        self->prm[P_SLOTCHECK] < 0 || self->prm[P_SLOTCHECK] > 1 || self->prm[P_POS0] < 0 ||
        self->prm[P_MIXDECAY] < 0 || self->prm[P_MIXDECAY] > ((i64)1 << 30) ||
        self->prm[P_APM3] < 0 || self->prm[P_APM3] > 1 || self->prm[P_APM4] < 0 ||
        self->prm[P_APM4] > self->prm[P_APM3] || self->prm[P_XRATE] < 1 || self->prm[P_XRATE] > 16 ||
        self->prm[P_FINALMIN] < 1 || self->prm[P_FINALMIN] > 4) {
        PyErr_SetString(PyExc_ValueError, "Kernel: inconsistent parameters");
        return -1;
    }
    i64 bb = b > 0 ? b : 1;
    /* Items each array must hold at least, and its item size. */
    i64 need[N_ARRAYS] = {
        [A_T] = self->prm[P_TABLESIZE], [A_C0] = b, [A_C0N] = b, [A_H8] = b, [A_WORDH] = b,
        [A_PWORD] = b, [A_COL] = b, [A_FIELD] = b, [A_LINE] = b, [A_PLINE] = b, [A_ABOVE] = b,
        [A_HIST] = bb << self->prm[P_RINGBITS], [A_MTAB] = (i64)1 << self->prm[P_MHASHBITS],
        [A_MLEN] = b, [A_MPTR] = b, [A_MOK] = b, [A_IDX] = b * ncols, [A_VAL] = b * ncols,
        [A_PCL] = b * cw, [A_X] = b * (ns * ni + next), [A_WBASE] = b * ns, [A_BLK] = b * nc,
        [A_ABASE] = b * 4, [A_CTXV] = b * nc, [A_EBIT] = b * 8, [A_MIDX] = b * 8,
        [A_WSEL] = b, [A_WSEL2] = b, [A_P12] = b, [A_STRETCH] = 4096, [A_SQUASH] = 4096,
        [A_RECIP] = 1 << N_BITS, [A_MBUCKET] = 65, [A_WORDBYTE] = 256, [A_LIM] = cw,
        [A_CTXOFF] = nc, [A_KINDS] = nc, [A_SELOFF] = ns - 2, [A_SELKINDS] = ns - 2,
        [A_TMPL] = b, [A_IND2] = IND2_SIZE, [A_RECIPAPM] = 1 << N_BITS, [A_PTMPL] = b,
        [A_CFIELDS] = b * (MAX_FIELD + 1), [A_PFIELDS] = b * (MAX_FIELD + 1),
        [A_FTAB] = (i64)1 << FTAB_BITS, [A_TFS] = b, [A_TAB] = b,
        [A_TTAB] = (i64)1 << TTAB_BITS, [A_TKS] = b, [A_TKC] = b, [A_TOB] = b,
        [A_TABCMP] = b, [A_TOKCMP] = b, [A_TOKSEP] = b, [A_TOKDIFFS] = b,
        [A_KTAB] = (i64)1 << KTAB_BITS, [A_KVC] = b, [A_KVB] = b, [A_KVCMP] = b,
        [A_IND1] = 256, [A_IND4] = (i64)1 << IND4_BITS, [A_ALIGN] = b * 4,
        [A_APM3] = self->prm[P_APM3] ? APM3_SIZE * APM_POINTS : 0,
        [A_APM4] = self->prm[P_APM4] ? APM4_SIZE * APM_POINTS : 0, [A_MISSES] = b,
        [A_VTAB] = (i64)1 << NTAB_BITS, [A_NTAB] = (i64)1 << NTAB_BITS, [A_NVAL] = b,
        [A_NKEY] = b, [A_NFS] = b, [A_NB] = b, [A_NCMP] = b, [A_TEXT] = b * TEXT_COLS,
        [A_VTAB2] = (i64)1 << NTAB_BITS, [A_NTAB2] = (i64)1 << NTAB_BITS,
        [A_NEXT2] = b * NEXT2_COLS, [A_LHEAD] = b * 2, [A_BLANK] = b,
    };
    for (int i = 0; i < N_ARRAYS; i++) {
        int isz = (i == A_HIST || i == A_MOK || i == A_WORDBYTE) ? 1 : 8;
        Py_buffer *v = &self->buf[i];
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(arrays, i), v,
                               PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            return -1;
        self->held[i] = 1;
        if (v->itemsize != isz || v->len / isz < need[i]) {
            PyErr_Format(PyExc_ValueError, "Kernel: array %s has item size %zd and %zd items, "
                         "needs %d and %lld", array_names[i], v->itemsize, v->len / v->itemsize,
                         isz, (long long)need[i]);
            return -1;
        }
    }
#define V(i) (self->buf[i].buf)
    self->t = V(A_T); self->c0 = V(A_C0); self->c0n = V(A_C0N); self->h8 = V(A_H8);
    self->wordh = V(A_WORDH); self->pword = V(A_PWORD); self->col = V(A_COL);
    self->field = V(A_FIELD); self->line = V(A_LINE); self->pline = V(A_PLINE);
    self->above = V(A_ABOVE); self->hist = V(A_HIST); self->mtab = V(A_MTAB);
    self->mlen = V(A_MLEN); self->mptr = V(A_MPTR); self->mok = V(A_MOK); self->idx = V(A_IDX);
    self->val = V(A_VAL); self->pcl = V(A_PCL); self->x = V(A_X); self->wbase = V(A_WBASE);
    self->blk = V(A_BLK); self->abase = V(A_ABASE); self->ctxv = V(A_CTXV);
    self->ebit = V(A_EBIT); self->midx = V(A_MIDX); self->wsel = V(A_WSEL);
    self->wsel2 = V(A_WSEL2); self->p12 = V(A_P12); self->stretch = V(A_STRETCH);
    self->squash = V(A_SQUASH); self->recip = V(A_RECIP); self->mbucket = V(A_MBUCKET);
    self->wordbyte = V(A_WORDBYTE); self->lim = V(A_LIM); self->ctxoff = V(A_CTXOFF);
    self->kinds = V(A_KINDS); self->seloff = V(A_SELOFF); self->selkinds = V(A_SELKINDS);
    self->tmpl = V(A_TMPL); self->ind2 = V(A_IND2); self->recip_apm = V(A_RECIPAPM);
    self->ptmpl = V(A_PTMPL); self->cfields = V(A_CFIELDS); self->pfields = V(A_PFIELDS);
    self->ftab = V(A_FTAB); self->tfs = V(A_TFS); self->tab = V(A_TAB);
    self->ttab = V(A_TTAB); self->tks = V(A_TKS); self->tkc = V(A_TKC);
    self->tob = V(A_TOB); self->tabcmp = V(A_TABCMP); self->tokcmp = V(A_TOKCMP);
    self->toksep = V(A_TOKSEP); self->tokdiffs = V(A_TOKDIFFS); self->ktab = V(A_KTAB);
    self->kvc = V(A_KVC); self->kvb = V(A_KVB); self->kvcmp = V(A_KVCMP);
    self->ind1 = V(A_IND1); self->ind4 = V(A_IND4); self->align = V(A_ALIGN); self->apm3 = V(A_APM3);
    self->apm4 = V(A_APM4); self->misses = V(A_MISSES);
    self->vtab = V(A_VTAB); self->ntab = V(A_NTAB); self->nval = V(A_NVAL);
    self->text = (u64 *)V(A_TEXT);
    self->nkey = V(A_NKEY); self->nfs = V(A_NFS); self->nb = V(A_NB); self->ncmp = V(A_NCMP);
    self->vtab2 = V(A_VTAB2); self->ntab2 = V(A_NTAB2); self->next2 = V(A_NEXT2);
    self->lhead = (u64 *)V(A_LHEAD);
    self->blank = V(A_BLANK);
#undef V
    self->uses_ind1 = 0;
    self->uses_ind4 = 0;
    self->uses_align = 0;
    self->uses_ind2 = 0;
    self->uses_ftab = 0;
    self->uses_ttab = 0;
    self->uses_tabcmp = 0;
    self->uses_tokcmp = 0;
    self->uses_tokrun = 0;
    self->uses_ktab = 0;
    self->uses_ntab = 0;
    self->uses_ntab2 = 0;
    self->uses_text = 0;
    self->uses_lhead = 0;
    self->uses_blank = 0;
    for (i64 j = 0; j < nc; j++) {
        i64 kd = self->kinds[j];
        self->uses_tabcmp |= kd == K_TMPLCMP;
        self->uses_tokcmp |= kd == K_TOKCMP || kd == K_TOKRUN;
        self->uses_tokrun |= kd == K_TOKRUN;
        self->uses_ktab |= kd == K_KEYVALUE;
        /* the token table and the token starts (which keyvalue needs too) */
        self->uses_ttab |= kd == K_TOKABOVE || kd == K_TOKCMP || kd == K_TOKRUN || kd == K_KEYVALUE;
        self->uses_ftab |= kd == K_TMPLABOVE || kd == K_TMPLCMP;
        self->uses_ind2 |= kd == K_IND2;
        self->uses_ind1 |= kd == K_IND1;
        self->uses_ind4 |= kd == K_IND4;
        self->uses_align |= kd == K_ALIGN;
        self->uses_ntab |= kd == K_TMPLNEXT || kd == K_TMPLNEXT2; /* the value table */
        self->uses_ntab2 |= kd == K_TMPLNEXT2;
        self->uses_lhead |= kd == K_HEADABOVE;
        self->uses_blank |= kd == K_BLANKPOS;
        self->uses_text |= (kd >= K_WORDGAP && kd <= K_GAPWORDS) || kd == K_KEYWORD ||
                           kd == K_WORDSKIP;
        if (kd < 0 || kd > K_LAST) {
            PyErr_SetString(PyExc_ValueError, "Kernel: unknown context kind");
            return -1;
        }
    }
    for (i64 e = 0; e < ns - 2; e++) {
        self->uses_ftab |= self->selkinds[e] == S_TABOVE;
        if (self->selkinds[e] < 0 || self->selkinds[e] > S_LAST) {
            PyErr_SetString(PyExc_ValueError, "Kernel: unknown mixer selector");
            return -1;
        }
    }
    self->key = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->ikey = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->ival = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->a3idx = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->a3val = PyMem_Malloc(sizeof(i64) * (size_t)bb * 2);
    self->a4idx = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->a4val = PyMem_Malloc(sizeof(i64) * (size_t)bb * 2);
    self->p16last = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->xkey = PyMem_Malloc(sizeof(i64) * (size_t)bb * 2);
    self->xval = PyMem_Malloc(sizeof(i64) * (size_t)bb * 2);
    self->fkey = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->tkey = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->kkey = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->nwkey = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->skey = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->skey2 = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->nwval = PyMem_Malloc(sizeof(u64) * (size_t)bb);
    self->scratch = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    self->y = PyMem_Malloc(sizeof(i64) * (size_t)bb);
    if (!self->key || !self->ikey || !self->ival || !self->a3idx || !self->a3val ||
        !self->a4idx || !self->a4val || !self->p16last || !self->xkey || !self->xval ||
        !self->fkey || !self->tkey || !self->kkey || !self->nwkey || !self->skey || !self->nwval ||
        !self->skey2 || !self->scratch || !self->y) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *bad_state(void) {
    PyErr_SetString(PyExc_RuntimeError, "Kernel.predict: table index out of range "
                    "(inconsistent predictor state)");
    return NULL;
}

/* ------------------------------------------------------------------ per-byte work */

/* slot_check (_checked_slots in numpy): entry 0 of a slot (no counter uses it) holds a
 * 16-bit check of the context that owns the slot, 1..65536 (never a counter's value).
 * Slots form sets of 4 (slot numbers 4k..4k+3). A context looks for its check in its own
 * slot, then in the others of the set (slot + 1, + 2, + 3, wrapping in the set); when none
 * holds it, it takes the slot whose first counter has seen the fewest bits (an unclaimed
 * slot counts -1; the first in that order on a tie) and resets its counters. Streams
 * claim in row order. */
static inline int is_check(i64 v) { return v >= 1 && v <= 65536; }
static i64 checked_slot(Kernel *k, i64 off, i64 slot, i64 chk) {
    i64 *t = k->t, set = off + (slot & ~(i64)3) * 16;
    /* outside the table: leave it to predict's index check (inconsistent state) */
    if (set < 0 || set + 64 > k->prm[P_TABLESIZE]) return off + slot * 16;
    i64 best = -1, best_n = 0;
    for (int w = 0; w < 4; w++) {
        i64 c = set + ((slot + w) & 3) * 16;
        if (t[c] == chk) return c;
    }
    for (int w = 0; w < 4; w++) {
        i64 c = set + ((slot + w) & 3) * 16;
        i64 n = is_check(t[c]) ? (t[c + 1] & N_MASK) : -1;
        if (best < 0 || n < best_n) best = c, best_n = n;
    }
    t[best] = chk;
    for (int m = 1; m < 16; m++) t[best + m] = (i64)1 << (P_BITS - 1) << N_BITS;
    return best;
}

/* _nibble_slots for stream i: hi is 0 for the high nibble, 1 + the high nibble after. */
static void nibble_slots(Kernel *k, i64 i, i64 hi) {
    i64 nc = k->prm[P_NC], tsize = k->prm[P_TABLESIZE];
    int slot_shift = 64 - ((int)k->prm[P_TABLEBITS] - 4);
    i64 *blk = k->blk + i * nc;
    u64 chk[nc > 0 ? nc : 1];
    /* Two passes: every context's slot is hashed and fetched before any is claimed, so
     * the ~30 cache misses of a nibble overlap instead of stalling one after another
     * (a third of the time was spent here; no effect on any value). */
    for (i64 j = 0; j < nc; j++) {
        i64 kind = k->kinds[j];
        u64 v = k->ctxv[i * nc + j];
        if (kind == 0 || kind == 1) { /* o0, o1: direct */
            blk[j] = k->ctxoff[j] + ((i64)v * 17 + hi) * 16;
            chk[j] = 0;
        } else {
            u64 h = (v + (u64)hi * H3 + (u64)j) * H1;
            h = (h ^ (h >> 29)) * H2;
            blk[j] = k->ctxoff[j] + (i64)(h >> slot_shift) * 16;
            chk[j] = k->prm[P_SLOTCHECK] ? ((h >> 16) & 0xFFFF) + 1 : 0;
        }
        if (blk[j] >= 0 && blk[j] + 16 <= tsize) __builtin_prefetch(k->t + blk[j]);
    }
    for (i64 j = 0; j < nc; j++) {
        if (chk[j]) /* the slot number again from its block */
            blk[j] = checked_slot(k, k->ctxoff[j], (blk[j] - k->ctxoff[j]) / 16, (i64)chk[j]);
        /* The slot's 16 counters (two cache lines) serve the next four bits: fetch them
         * now rather than stall on the first one (no effect on any value). */
        i64 b0 = blk[j];
        if (b0 >= 0 && b0 + 16 <= tsize) {
            __builtin_prefetch(k->t + b0);
            __builtin_prefetch(k->t + b0 + 8);
        }
    }
}

/* The value of an extra weight-set selector for stream i (MixerSelector in numpy). */
static inline i64 selector(const Kernel *k, i64 i, i64 kind, int bit, int mok) {
    u64 h8 = k->h8[i];
    switch (kind) {
    case S_FIELD: return k->field[i];
    case S_COLUMN: return k->col[i] < 63 ? k->col[i] : 63;
    case S_SHAPE2: return BYTECLASS[h8 & 0xFF] * 8 + BYTECLASS[(h8 >> 8) & 0xFF];
    case S_BYTE2: return (i64)((h8 >> 8) & 0xFF);
    case S_ABOVE: return k->above[i];
    case S_TABOVE: return k->tab[i];
    default: { /* S_MATCH: the length while the match holds (saturating), the expected bit */
        i64 ml = mok ? (k->mlen[i] < 31 ? k->mlen[i] : 31) : 0;
        return ml * 2 + k->ebit[i * 8 + bit];
    }
    }
}

/* _byte_contexts for stream i. */
/* The bytes (256: none) at start + off and the one after in row's ring, for stream i,
 * where valid, before position limit and still in the ring (_bytes_at in numpy). */
static void bytes_at(const Kernel *k, i64 i, i64 start, i64 row, int valid, i64 off, i64 limit,
                     u64 out[2]) {
    i64 nxt = k->line[i] + k->col[i];
    int rb = (int)k->prm[P_RINGBITS];
    i64 rmask = ((i64)1 << rb) - 1, base = row << rb;
    for (int m = 0; m < 2; m++) {
        i64 a = start + off + m;
        int ok = valid && a < limit && nxt - a <= rmask;
        out[m] = ok ? k->hist[base + (a & rmask)] : 256;
    }
}

/* The same after the start a field or token table entry names ((position + 1) << 16 |
 * row, 0: none), in any row, up to the byte coded last (_entry_bytes). */
static void entry_bytes(const Kernel *k, i64 i, i64 cand, i64 off, u64 out[2]) {
    bytes_at(k, i, (cand >> 16) - 1, cand & 0xFFFF, cand > 0, off, k->line[i] + k->col[i], out);
}

/* ind4's entry for the last four bytes of h8 */
static inline i64 ind4_key(u64 h8) {
    return (i64)((((h8 & 0xFFFFFFFF) + 1) * H2) >> (64 - IND4_BITS));
}

/* The contexts of stream i's next byte, at position pos. */
static void byte_contexts(Kernel *k, i64 i, i64 pos) {
    i64 nc = k->prm[P_NC], ni = k->prm[P_NI];
    u64 h8 = k->h8[i], c1 = h8 & 0xFF;
    u64 wordh = k->wordh[i];
    const u64 *tx = k->text + i * TEXT_COLS;
    /* tmplabove: the two bytes at the next byte's offset in the field where this line's
     * template up to its field last began (a field table entry: position and row) */
    u64 tab[2] = {256, 256}, tok[2] = {256, 256};
    i64 foff = k->col[i] - k->cfields[i * (MAX_FIELD + 1) + k->field[i]]; /* offset in field */
    if (k->uses_ftab) {
        entry_bytes(k, i, k->tfs[i], foff, tab);
        k->tab[i] = (i64)tab[0];
    }
    if (k->uses_ttab) {
        entry_bytes(k, i, k->tkc[i], k->col[i] - k->tks[i], tok);
        k->tob[i] = (i64)tok[0];
    }
    u64 kv[2] = {256, 256}; /* keyvalue: where the same key's value began last time */
    if (k->uses_ktab) {
        entry_bytes(k, i, k->kvc[i], k->col[i] - k->tks[i], kv);
        k->kvb[i] = (i64)kv[0];
    }
    if (k->uses_ntab) { /* tmplnext: in the field that followed this value last time */
        u64 nb[2];
        entry_bytes(k, i, k->nfs[i], foff, nb);
        k->nb[i] = (i64)nb[0];
    }
    if (k->uses_ntab2) { /* tmplnext2: the same after the last two values */
        u64 nb[2];
        i64 *n2 = k->next2 + i * NEXT2_COLS;
        entry_bytes(k, i, n2[N2_FS], foff, nb);
        n2[N2_B] = (i64)nb[0];
    }
    for (i64 j = 0; j < nc; j++) {
        i64 kind = k->kinds[j];
        u64 v;
        switch (kind) {
        case K_WORD: v = (wordh + c1) * H2; break;
        case K_BIGRAM: v = (wordh + k->pword[i] * H3 + c1) * H1; break;
        case K_COLUMN: v = ((u64)k->above[i] << 8) | c1; break;
        case K_FIELD: v = wordh * H3 + (u64)k->field[i]; break;
        case K_SPARSE: v = (h8 >> 8) & 0xFFFF; break;
        case K_O8: v = h8; break;
        case K_LINEPOS:
        case K_BLANKPOS: /* the position in the line, or (blankpos) on a line blank so far
                          * the byte above */
            v = ((u64)(k->col[i] < 255 ? k->col[i] : 255) << 8) | c1;
            if (kind == K_BLANKPOS && k->blank[i]) v = ((u64)1 << 20) | ((u64)k->above[i] << 8) | c1;
            break;
        case K_SHAPE: {
            u64 sig = 0;
            for (int m = 0; m < 8; m++) sig = (sig << 3) | BYTECLASS[(h8 >> (8 * m)) & 0xFF];
            v = (sig << 8) | c1;
            break;
        }
        case K_ABOVE2: v = ((u64)k->above[i] << 16) | (h8 & 0xFFFF); break;
        case K_TEMPLATE: v = (k->tmpl[i] + c1) * H3; break;
        case K_PTEMPLATE: v = (k->ptmpl[i] * H1 + k->tmpl[i] + c1) * H3; break;
        case K_HEADABOVE: /* the head of the line above (which kind of line it was) */
            v = (k->lhead[i * 2 + 1] * H1 + k->tmpl[i] + c1) * H2;
            break;
        case K_FIELDABOVE: { /* the two bytes at this offset of this field, one line up */
            i64 f = k->field[i], pf = k->pfields[i * (MAX_FIELD + 1) + f];
            u64 ab[2];
            bytes_at(k, i, k->pline[i] + pf, i, pf >= 0, foff, k->line[i], ab);
            v = ((((ab[0] << 9) | ab[1]) << 8) | c1) * H1 + (u64)f;
            break;
        }
        case K_TMPLABOVE: /* the same where this template's field began last time */
            v = (((((tab[0] << 9) | tab[1]) << 8) | c1) * H1 + k->tmpl[i]) * H3;
            break;
        case K_TOKABOVE: { /* the same for the token, with its offset (saturating) */
            i64 off = k->col[i] - k->tks[i];
            v = (((((tok[0] << 9) | tok[1]) << 8) | c1) * H1 + (u64)(off < 15 ? off : 15)) * H2;
            break;
        }
        case K_TMPLCMP: /* tmplabove's byte, how this field compares so far, the template */
            v = ((((u64)k->tab[i] << 2) | (u64)k->tabcmp[i]) * H1 + k->tmpl[i]) * H3;
            break;
        case K_TOKCMP: /* tokabove's byte and how this token compares so far; tokrun: */
        case K_TOKRUN: /* with the token's opening byte and the run of unequal tokens */
            v = ((u64)k->tob[i] << 2) | (u64)k->tokcmp[i];
            if (kind == K_TOKRUN) v |= ((u64)k->toksep[i] << 11) | ((u64)k->tokdiffs[i] << 20);
            break;
        case K_KEYVALUE: /* the key's last value: two bytes, and how this token compares */
            v = ((((kv[0] << 9) | kv[1]) << 2) | (u64)k->kvcmp[i]) * H1;
            break;
        case K_TMPLNEXT: /* its byte, how this field compares so far, the field index */
            v = ((((u64)k->nb[i] << 2) | (u64)k->ncmp[i]) * H1 + (u64)k->field[i]) * H2;
            break;
        case K_TMPLNEXT2: { /* the same for tmplnext2 */
            const i64 *n2 = k->next2 + i * NEXT2_COLS;
            v = ((((u64)n2[N2_B] << 2) | (u64)n2[N2_CMP]) * H1 + (u64)k->field[i]) * H3;
            break;
        }
        case K_KEYWORD: v = ((tx[T_KEY] * H2 + tx[T_W0]) * H3 + c1) * H1; break;
        case K_WORDSKIP: /* the word so far, c1, the word before the previous one */
            v = ((tx[T_W0] * H3 ^ tx[T_W2]) * H1 ^ c1) * H2;
            break;
        case K_WORDGAP: v = (tx[T_W0] * H3 + tx[T_G0]) * H1; break;
        case K_BLOCKWORD: v = ((u64)(pos >> 10) * H3 + tx[T_W0]) * H1; break;
        case K_CHARMASK: v = tx[T_MASK] * H2; break;
        case K_GAPWORDS:
            v = (((tx[T_G0] * H3 + tx[T_W1]) * H1 + tx[T_G1]) * H2 + tx[T_W2]) * H3;
            break;
        case K_IND2: v = ((u64)k->ind2[h8 & 0xFFFF] << 16) | (h8 & 0xFFFF); break;
        case K_ALIGN: {
            const i64 *a = k->align + 4 * i;
            u64 ab = a[0] >= 0 ? k->hist[a[0]] : 256;
            u64 r = a[1] < 15 ? (u64)a[1] : 15;
            u64 agree = k->mok[i] && a[0] >= 0 && k->hist[k->mptr[i]] == ab;
            v = ((((ab << 4 | r) << 1 | agree) << 8) | c1) * H1;
            break;
        }
        case K_IND1: v = ((u64)k->ind1[c1] << 8) | c1; break;
        case K_IND4: v = (((u64)k->ind4[ind4_key(h8)] << 8) | c1) * H1; break;
        case K_MATCHBYTE:
        case K_MATCHBYTE3: { /* the byte the match predicts (256: none), its length, c1 */
            i64 ml = k->mlen[i];
            u64 mb = k->mok[i] ? k->hist[k->mptr[i]] : 256;
            u64 lb = k->mok[i] ? (u64)(ml < 16 ? ml : 16 + (ml >= 32)) : 0;
            v = kind == K_MATCHBYTE ? (((mb << 5) | lb) << 8) | c1
                                    : ((((mb << 5) | lb) * H3) ^ (h8 & 0xFFFFFF)) * H1; /* c1..c3 */
            break;
        }
        case K_SHAPEFIELD: {
            u64 sig = 0;
            for (int m = 0; m < 4; m++) sig = (sig << 3) | BYTECLASS[(h8 >> (8 * m)) & 0xFF];
            v = (((sig << 6) | (u64)k->field[i]) << 8) | c1;
            break;
        }
        default: v = kind == 0 ? 0 : h8 & (((u64)1 << (8 * kind)) - 1); break;
        }
        k->ctxv[i * nc + j] = v;
    }
    nibble_slots(k, i, 0);
    i64 mlen = k->mlen[i];
    i64 mbucket = k->mok[i] ? k->mbucket[mlen < 64 ? mlen : 64] : 0;
    i64 mbyte = k->hist[k->mptr[i]];
    for (int bit = 0; bit < 8; bit++) {
        i64 e = (mbyte >> (7 - bit)) & 1;
        k->ebit[i * 8 + bit] = e;
        k->midx[i * 8 + bit] = k->prm[P_MATCHOFF] + (mbucket * 2 + e) * 16 + bit;
    }
    k->wsel[i] = (mbucket < 3 ? mbucket : 3) << 8;
    /* w2_off: set B follows the 1024 sets of A */
    i64 w2_off = k->prm[P_WOFF] + 256 * 4 * ni;
    k->wsel2[i] = w2_off + ((i64)c1 << 3) * ni;
    i64 apm2_off = k->prm[P_WOFF] - (i64)(1 << 16) * APM_POINTS;
    i64 a2 = apm2_off + ((i64)c1 << 8) * APM_POINTS;
    k->abase[i * 4 + 2] = a2;
    k->abase[i * 4 + 3] = a2 + 1;
    /* The first bit's weights of the extra sets (they miss the cache otherwise). */
    for (i64 e = 0; e < k->prm[P_NSETS] - 2; e++) {
        i64 wb = k->seloff[e] + selector(k, i, k->selkinds[e], 0, k->mok[i] != 0) * 8 * ni;
        if (wb >= 0 && wb + ni <= k->prm[P_TABLESIZE])
            for (i64 m = 0; m < ni; m += 8) __builtin_prefetch(k->t + wb + m);
    }
}

/* table[keys[i]] = max(itself, (at + 1) << 16 | i) for the streams with a key (>= 0), as
 * np.maximum.at: the most recent position, then the highest row, whatever the order. */
static void keep_latest(i64 *table, const i64 *keys, i64 n, i64 at) {
    for (i64 i = 0; i < n; i++)
        if (keys[i] >= 0) {
            i64 v = ((at + 1) << 16) | i;
            if (v > table[keys[i]]) table[keys[i]] = v;
        }
}

/* How a field or token compares with the one its context predicted, after `byte`, the
 * byte `predicted` for it (256: none), and a separator: CMP_EQUAL until a byte differs,
 * then whether that byte was greater or less (or had no prediction), until the next
 * separator (_compare_step in numpy). */
enum { CMP_EQUAL, CMP_GREATER, CMP_LESS, CMP_NONE };
static inline i64 compare_step(i64 state, i64 byte, i64 predicted, int separator) {
    if (separator) return CMP_EQUAL;
    if (state != CMP_EQUAL || byte == predicted) return state;
    return predicted == 256 ? CMP_NONE : (byte > predicted ? CMP_GREATER : CMP_LESS);
}

/* tmplnext after `byte` for stream i (_next_field in numpy), the field index not yet moved
 * on: a field that ends leaves its value for the value table (written in pass 3); one that
 * opens reads the value the same template's field had last time, and where the field that
 * followed that value began (the successor table, written in pass 4). */
static void next_field(Kernel *k, i64 i, i64 byte) {
    int nl = byte == 10, sep = nl || byte == 32;
    i64 f = k->field[i];
    k->ncmp[i] = compare_step(k->ncmp[i], byte, k->nb[i], sep);
    i64 *n2 = k->next2 + i * NEXT2_COLS;
    if (k->uses_ntab2) n2[N2_CMP] = compare_step(n2[N2_CMP], byte, n2[N2_B], sep);
    k->skey2[i] = -1;
    k->nwkey[i] = sep ? k->nkey[i] : -1;
    k->nwval[i] = k->nval[i] + 1;
    k->nval[i] = sep ? 0 : (k->nval[i] + (u64)byte + 1) * H2;
    k->skey[i] = -1;
    if (nl || (byte == 32 && f < MAX_FIELD)) { /* field nf opens */
        u64 nf = nl ? 0 : (u64)f + 1;
        u64 t = ((nl ? 0 : k->tmpl[i]) + nf + 1) * H2;
        i64 key = (i64)(t >> (64 - NTAB_BITS));
        u64 h = (k->vtab[key] + t) * H1;
        h = (h ^ (h >> 29)) * H2;
        k->skey[i] = (i64)(h >> (64 - NTAB_BITS));
        k->nfs[i] = k->ntab[k->skey[i]];
        k->nkey[i] = key;
        if (k->uses_ntab2) { /* by the value before the last as well */
            u64 h2 = ((k->vtab2[key] * H3 + k->vtab[key]) + t) * H1;
            h2 = (h2 ^ (h2 >> 29)) * H2;
            k->skey2[i] = (i64)(h2 >> (64 - NTAB_BITS));
            n2[N2_FS] = k->ntab2[k->skey2[i]];
        }
    } else if (byte == 32) /* a space in the last field (saturated) opens none */
        k->nkey[i] = -1;
}

/* The text state after `byte` (_text_step in numpy): words are runs of word bytes
 * (WORD_BYTE), case-folded; a gap is the run of other bytes before a word (a newline
 * counts as a space). */
static void text_step(u64 *tx, i64 byte, int is_word) {
    u64 c = (u64)byte;
    if (c >= 'A' && c <= 'Z') c += 32;
    int digit = c >= '0' && c <= '9';
    u64 cls = c;
    if (is_word) {
        if (tx[T_W0] == 0) { /* a word starts: its gap ends */
            tx[T_G1] = tx[T_G0];
            tx[T_G0] = 0;
        }
        tx[T_W0] = (tx[T_W0] + c + 1) * H1;
        int vowel = c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u';
        cls = digit ? '0' : (vowel ? 'a' : 'b');
    } else {
        tx[T_G0] = (tx[T_G0] + (byte == 10 ? 32 : c) + 1) * H2;
        if (tx[T_W0] != 0) { /* a word ends */
            tx[T_W2] = tx[T_W1];
            tx[T_W1] = tx[T_W0];
            tx[T_W0] = 0;
        }
        if (c == ':' || c == '=') tx[T_KEY] = tx[T_W1];
    }
    tx[T_MASK] = ((tx[T_MASK] << 8) | cls) & 0xFFFFFFFFULL;
}

/* _end_byte for streams 0..n-1, at byte position pos. */
static void end_byte(Kernel *k, i64 n, i64 pos) {
    int rb = (int)k->prm[P_RINGBITS];
    i64 ring_mask = ((i64)1 << rb) - 1;
    i64 nxt = pos + 1, mmin = k->prm[P_MATCHMIN];
    int mhb = (int)k->prm[P_MHASHBITS];
    uint8_t *hist = k->hist;
    /* Pass 1: every stream's byte goes into its ring before anyone reads history. */
    for (i64 i = 0; i < n; i++) hist[(i << rb) + (pos & ring_mask)] = (uint8_t)(k->c0[i] - 256);
    /* Pass 2: per-stream state; match candidates read the table as it was before. */
    for (i64 i = 0; i < n; i++) {
        i64 byte = k->c0[i] - 256;
        i64 row_base = i << rb;
        u64 ub = (u64)byte;
        u64 h8 = (k->h8[i] << 8) | ub;
        k->h8[i] = h8;
        if (k->uses_text) text_step(k->text + i * TEXT_COLS, byte, k->wordbyte[byte] != 0);
        if (k->uses_blank) /* a newline starts a blank line, any byte but a blank ends it */
            k->blank[i] = byte == 10 || (k->blank[i] && (byte == 32 || byte == 9));
        int alnum = (byte >= '0' && byte <= '9') || (byte >= 'A' && byte <= 'Z') ||
                    (byte >= 'a' && byte <= 'z');
        if (k->uses_tabcmp) /* fields end at a space or a newline, tokens at any non-alnum */
            k->tabcmp[i] = compare_step(k->tabcmp[i], byte, k->tab[i], byte == 32 || byte == 10);
        if (k->uses_tokrun && !alnum) { /* a token ends unequal (the run grows) or equal,
                                          * or the line ends */
            i64 grown = k->tokdiffs[i] < 3 ? k->tokdiffs[i] + 1 : 3;
            k->tokdiffs[i] = k->tokcmp[i] != CMP_EQUAL && byte != 10 ? grown : 0;
        }
        if (k->uses_tokcmp) k->tokcmp[i] = compare_step(k->tokcmp[i], byte, k->tob[i], !alnum);
        if (k->uses_ktab) k->kvcmp[i] = compare_step(k->kvcmp[i], byte, k->kvb[i], !alnum);
        if (k->uses_ind2) { /* this byte follows the pair before it (written in pass 3) */
            i64 ik = (i64)((h8 >> 8) & 0xFFFF);
            k->ikey[i] = ik;
            k->ival[i] = ((k->ind2[ik] << 8) | (i64)ub) & 0xFFFF;
        }
        if (k->uses_ind1) { /* ... and the byte before it, and the four before it */
            k->xkey[2 * i] = (i64)((h8 >> 8) & 0xFF);
            k->xval[2 * i] = ((k->ind1[k->xkey[2 * i]] << 8) | (i64)ub) & 0xFFFFFF;
        }
        if (k->uses_ind4) {
            k->xkey[2 * i + 1] = ind4_key(h8 >> 8);
            k->xval[2 * i + 1] = ((k->ind4[k->xkey[2 * i + 1]] << 8) | (i64)ub) & 0xFFFF;
        }
        int is_word = k->wordbyte[byte] != 0;
        u64 wordh = k->wordh[i];
        if (!is_word && wordh != 0) k->pword[i] = wordh;
        k->wordh[i] = is_word ? (wordh + ub + 1) * H1 : 0;
        /* The line's template: its bytes with every digit run as one marker. */
        u64 prev = (h8 >> 8) & 0xFF;
        int dig = byte >= '0' && byte <= '9', pdig = prev >= '0' && prev <= '9';
        if (byte == 10) {
            k->ptmpl[i] = k->tmpl[i];
            k->tmpl[i] = 0;
        }
        else if (!dig)
            k->tmpl[i] = (k->tmpl[i] + ub + 1) * H2;
        else if (!pdig)
            k->tmpl[i] = (k->tmpl[i] + TEMPLATE_DIGITS) * H2;
        if (k->uses_lhead) { /* (col is still this byte's column) */
            u64 *lh = k->lhead + i * 2;
            if (byte == 10)
                lh[1] = k->col[i] >= HEAD_BYTES ? lh[0] : k->ptmpl[i];
            else if (k->col[i] == HEAD_BYTES - 1)
                lh[0] = k->tmpl[i];
        }
        /* tokabove: a token opens after every byte that is not an ASCII letter or digit;
         * keyed by the template so far alone (read here, written in pass 4) */
        k->tkey[i] = -1;
        if (k->uses_ttab && !alnum) {
            u64 h = byte == 10 ? 0 : k->tmpl[i] * H2;
            k->tkey[i] = (i64)(h >> (64 - TTAB_BITS));
            k->tkc[i] = k->ttab[k->tkey[i]];
            k->tks[i] = byte == 10 ? 0 : k->col[i] + 1; /* the next column (col moves below) */
            k->toksep[i] = byte;
        }
        /* keyvalue: the same, keyed by the last word and this byte (the key and its "=") */
        k->kkey[i] = -1;
        if (k->uses_ktab && !alnum) {
            u64 h = byte == 10 ? 0 : (k->pword[i] + ub + 1) * H2;
            k->kkey[i] = (i64)(h >> (64 - KTAB_BITS));
            k->kvc[i] = k->ktab[k->kkey[i]];
        }
        if (k->uses_ntab) next_field(k, i, byte);
        i64 *cf = k->cfields + i * (MAX_FIELD + 1), *pf = k->pfields + i * (MAX_FIELD + 1);
        /* tmplabove: a field opens after a newline, or a space below the last field; its
         * key is the template so far (read here, written in pass 4, as the match table) */
        k->fkey[i] = -1;
        if (k->uses_ftab && (byte == 10 || (byte == 32 && k->field[i] < MAX_FIELD))) {
            u64 h = byte == 10 ? 0 : (k->tmpl[i] + (u64)k->field[i] + 1) * H2;
            k->fkey[i] = (i64)(h >> (64 - FTAB_BITS));
            k->tfs[i] = k->ftab[k->fkey[i]];
        }
        if (byte == 10) {
            k->pline[i] = k->line[i];
            k->line[i] = pos + 1;
            k->col[i] = 0;
            k->field[i] = 0;
            /* this line's field starts become the previous line's */
            for (int m = 0; m <= MAX_FIELD; m++) pf[m] = cf[m], cf[m] = -1;
            cf[0] = 0;
        } else {
            k->col[i] += 1;
            /* a space opens the next field at the next column */
            if (byte == 32 && k->field[i] < MAX_FIELD) cf[k->field[i] + 1] = k->col[i];
            i64 f = k->field[i] + (byte == 32);
            k->field[i] = f < MAX_FIELD ? f : MAX_FIELD;
        }
        i64 ab_pos = k->pline[i] + k->col[i];
        int has_above = (ab_pos < k->line[i]) && (pos + 1 - ab_pos <= ring_mask);
        k->above[i] = has_above ? (i64)hist[row_base + (ab_pos & ring_mask)] : 256;

        int ok = k->mok[i] != 0;
        i64 mlen = 0;
        if (ok) mlen = k->mlen[i] + 1 < 65535 ? k->mlen[i] + 1 : 65535;
        i64 mptr = k->mptr[i];
        mptr = ((mptr >> rb) << rb) + ((mptr + 1) & ring_mask);
        if (nxt >= mmin) {
            u64 key_mask = mmin >= 8 ? ~(u64)0 : (((u64)1 << (8 * mmin)) - 1);
            i64 key = (i64)(((h8 & key_mask) * H2) >> (64 - mhb));
            i64 cand = k->mtab[key];
            k->key[i] = key;
            if (!ok && cand > 0) {
                i64 c_pos = (cand >> 16) - 1, c_row = cand & 0xFFFF;
                i64 vlen = 0;
                for (i64 back = 1; back <= 16; back++) {
                    int valid = back <= c_pos && nxt - c_pos + back <= ring_mask;
                    if (!valid) break;
                    uint8_t own = hist[row_base + ((nxt - back) & ring_mask)];
                    uint8_t oth = hist[(c_row << rb) + ((c_pos - back) & ring_mask)];
                    if (own != oth) break;
                    vlen++;
                }
                if (vlen >= mmin) {
                    mlen = vlen;
                    mptr = (c_row << rb) + (c_pos & ring_mask);
                }
            }
        }
        k->mlen[i] = mlen;
        k->mptr[i] = mptr;
        k->mok[i] = mlen > 0;
        if (k->uses_align) {
            i64 *a = k->align + 4 * i, ap = a[0];
            if (ap >= 0 && (i64)hist[ap] == byte) {
                a[0] = ((ap >> rb) << rb) + ((ap + 1) & ring_mask);
                a[1] += 1;
            } else if (ap >= 0) {
                if (a[1] >= ALIGN_MIN) a[3] = ap, a[2] = 0; /* keep waiting here */
                else if (a[1] > 0) a[0] = a[3], a[2] += 1; /* false start: back */
                else a[2] += 1;
                a[1] = 0;
            }
            if ((a[0] < 0 || (a[1] == 0 && a[2] > ALIGN_WAIT)) && mlen > 0) {
                a[0] = mptr; a[1] = mlen > ALIGN_MIN ? mlen : ALIGN_MIN; a[2] = 0; a[3] = mptr;
            }
        }
    }
    /* Pass 3: the indirect table from values read before the step; streams that share a
     * pair write in row order, so the highest row's value stays (as in numpy). */
    if (k->uses_ind2)
        for (i64 i = 0; i < n; i++) k->ind2[k->ikey[i]] = k->ival[i];
    if (k->uses_ind1)
        for (i64 i = 0; i < n; i++) k->ind1[k->xkey[2 * i]] = k->xval[2 * i];
    if (k->uses_ind4)
        for (i64 i = 0; i < n; i++) k->ind4[k->xkey[2 * i + 1]] = k->xval[2 * i + 1];
    if (k->uses_ntab2) /* the values being replaced, all read before any is written */
        for (i64 i = 0; i < n; i++)
            if (k->nwkey[i] >= 0) k->vtab2[k->nwkey[i]] = k->vtab[k->nwkey[i]];
    if (k->uses_ntab)
        for (i64 i = 0; i < n; i++)
            if (k->nwkey[i] >= 0) k->vtab[k->nwkey[i]] = k->nwval[i];
    /* Pass 4: the field and token tables, then the match table record position pos + 1
     * where their keys say (all were read above). */
    if (k->uses_ftab) keep_latest(k->ftab, k->fkey, n, nxt);
    if (k->uses_ttab) keep_latest(k->ttab, k->tkey, n, nxt);
    if (k->uses_ktab) keep_latest(k->ktab, k->kkey, n, nxt);
    if (k->uses_ntab) keep_latest(k->ntab, k->skey, n, nxt);
    if (k->uses_ntab2) keep_latest(k->ntab2, k->skey2, n, nxt);
    if (nxt >= mmin) keep_latest(k->mtab, k->key, n, nxt);
}

/* ----------------------------------------------------------------------- lockstep */

/* apm_miss's state (0..15) from a stream's miss history: the last two bits, whether any of
 * the six before them, whether any of the eight before those */
static inline i64 miss_state(i64 ms) {
    return (ms & 3) | ((ms & 0xFC) != 0) << 2 | ((ms & 0xFF00) != 0) << 3;
}

/* predict_core and update_core are built once more for each newer x86-64 level and the
 * loader picks the build the CPU runs (glibc's ifunc): with AVX-512 the mixer's 64-bit
 * products and the external input's sums run 8 wide. Integers only: every build gives
 * the same bits. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define TZ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef TZ_CLONES
#define TZ_CLONES
#endif

/* The external input of stream i at byte `step`: stretch of P(next bit = 1) from the
 * byte's table, as the exact ratio of two partial sums (ExternalInput in numpy).
 * -1 when no table covers that byte. */
static inline int ext_input(const Kernel *k, i64 i, i64 step, int bit, i64 c0, i64 *xout) {
    i64 row = step - k->ext_first;
    if (!k->ext_held || row < 0 || row >= k->ext_k) return -1;
    i64 lo = (c0 - ((i64)1 << bit)) << (8 - bit), half = (i64)1 << (7 - bit);
    i64 s0 = 0, s1 = 0; /* < 2**40: at most 256 entries below 2**32 */
    if (k->ext_u32) {
        const uint32_t *tab = (k->ext_tab ? k->ext_tab : (const uint32_t *)k->ext.buf) +
                              (i * k->ext_k + row) * 256;
        for (i64 j = lo; j < lo + half; j++) s0 += tab[j];
        for (i64 j = lo + half; j < lo + 2 * half; j++) s1 += tab[j];
    } else {
        const i64 *tab = (const i64 *)k->ext.buf + (i * k->ext_k + row) * 256;
        for (i64 j = lo; j < lo + half; j++) s0 += tab[j];
        for (i64 j = lo + half; j < lo + 2 * half; j++) s1 += tab[j];
    }
    i64 s = s0 + s1;
    i64 p = s > 0 ? (s1 * 4096 + s / 2) / s : 2048;
    p = p < 1 ? 1 : (p > 4095 ? 4095 : p);
    *xout = k->stretch[p];
    return 0;
}

/* predict for streams 0..n-1 at bit position bit: p16[i] = P(bit = 1) in 1/65536 units.
 * Returns 0, or -1 when a table index leaves the table (inconsistent state). */
TZ_CLONES static int predict_core(Kernel *k, i64 n, int bit, i64 step, i64 *p16out) {
    i64 nc = k->prm[P_NC], ni = k->prm[P_NI], ncols = k->prm[P_NCOLS];
    i64 capm = k->prm[P_CAPM], cw = k->prm[P_CW], tsize = k->prm[P_TABLESIZE];
    i64 match_off = k->prm[P_MATCHOFF], w_off = k->prm[P_WOFF];
    i64 plo = k->prm[P_FINALMIN], phi = 65535 - plo; /* the final clip (final_min) */
    int bad = 0;
    const i64 apm_wmul[4] = {-1, 1, -2, 2}, apm_wadd[4] = {4096, 0, 8192, 0};
    for (i64 i = 0; i < n; i++) {
        i64 *idx = k->idx + i * ncols, *val = k->val + i * ncols, *pc = k->pcl + i * cw;
        i64 ns = k->prm[P_NSETS], next = k->prm[P_NEXT];
        i64 *x = k->x + i * (ns * ni + next), *wbase = k->wbase + i * ns;
        i64 c0 = k->c0[i], c0n = k->c0n[i];
        int mok = k->mok[i] != 0;
        for (i64 j = 0; j < nc; j++) idx[j] = k->blk[i * nc + j] + c0n;
        idx[nc] = mok ? k->midx[i * 8 + bit] : match_off + bit;
        for (i64 j = 0; j <= nc; j++) {
            if ((u64)idx[j] >= (u64)tsize) bad = 1, idx[j] = 0;
            val[j] = k->t[idx[j]];
            pc[j] = clip_p(val[j]);
            x[j] = k->stretch[pc[j] >> (P_BITS - 12)];
        }
        /* the external input and its own weight (per partial byte) go last */
        if (next && ext_input(k, i, step, bit, c0, &x[ns * ni])) bad = 1;
        /* (numpy keeps a copy of the inputs and the weight indices per set, for one
         * np.add.at; here every set reads x[0..ni) and its weights from wbase) */
        /* Mixer: set A by partial byte and match state, set B by last byte and bit, then
         * one set per extra selector (its value and the bit position). */
        wbase[0] = (c0 + (mok ? k->wsel[i] : 0)) * ni + w_off;
        wbase[1] = k->wsel2[i] + bit * ni;
        for (i64 e = 0; e < ns - 2; e++)
            wbase[2 + e] = k->seloff[e] + (selector(k, i, k->selkinds[e], bit, mok) * 8 + bit) * ni;
        u64 dot = 0;
        for (i64 s = 0; s < ns; s++) {
            if (wbase[s] < 0 || wbase[s] > tsize - ni) bad = 1, wbase[s] = 0;
            const i64 *w = k->t + wbase[s];
            for (i64 m = 0; m < ni; m++) dot += (u64)x[m] * (u64)w[m];
            /* sets other than A take the next bit's weights from the next row */
            if (s && bit < 7 && wbase[s] + 2 * ni <= tsize)
                for (i64 m = 0; m < ni; m += 8) __builtin_prefetch(w + ni + m);
        }
        if (next) dot += (u64)x[ns * ni] * (u64)k->t[k->prm[P_EXTW] + c0];
        i64 d = asr((i64)dot, 16);
        d = d < -2047 ? -2047 : (d > 2047 ? 2047 : d);
        d += 2048;
        i64 p12 = k->squash[d];
        /* APM/SSE: the two points around the mixer's stretch value, in APM1 and APM2. */
        i64 posn = d * (APM_POINTS - 1);
        i64 wt = posn & 4095;
        i64 a = c0 * APM_POINTS + (posn >> 12);
        u64 s_apm = 0;
        for (int m = 0; m < 4; m++) {
            i64 ia = k->abase[i * 4 + m] + a;
            if ((u64)ia >= (u64)tsize) bad = 1, ia = 0;
            idx[capm + m] = ia;
            val[capm + m] = k->t[ia];
            pc[capm + m] = clip_p(val[capm + m]);
            s_apm += (u64)pc[capm + m] * (u64)(wt * apm_wmul[m] + apm_wadd[m]);
        }
        k->p12[i] = p12;
        if (!k->prm[P_APM3]) {
            p16out[i] = asr((i64)(((u64)p12 << P_BITS) + s_apm), P_BITS - 16 + 12 + 2);
            continue;
        }
        /* apm_match: a third APM by the byte the match predicts (while it agrees), its
         * length bucket and the partial byte; (mixer + APM1 + 2 APM2 + 2 APM3) / 6 */
        u64 mb = mok ? (u64)k->hist[k->mptr[i]] : 256, lb = mok ? (u64)(k->wsel[i] >> 8) : 0;
        u64 h3 = ((mb << 2 | lb) << 8) | (u64)c0;
        i64 a3 = (i64)(((h3 + 1) * H1) >> 48) * APM_POINTS + (posn >> 12);
        k->a3idx[i] = a3;
        u64 s3 = 2 * apm_pair_read(k->apm3, a3, wt, k->a3val + 2 * i);
        i64 p16;
        if (!k->prm[P_APM4]) {
            p16 = (i64)(((((u64)p12 << P_BITS) + s_apm + s3) / 6) >> (P_BITS - 16 + 12));
        } else {
            /* apm_miss: a fourth APM by the partial byte and which of the last bits the
             * final probability got wrong; (mixer + APM1 + 2 APM2 + 2 APM3 + 4 APM4) / 10 */
            i64 a4 = ((c0 << 4) | miss_state(k->misses[i])) * APM_POINTS + (posn >> 12);
            k->a4idx[i] = a4;
            u64 s4 = apm_pair_read(k->apm4, a4, wt, k->a4val + 2 * i);
            p16 = (i64)(((((u64)p12 << P_BITS) + s_apm + s3 + 4 * s4) / 10) >> (P_BITS - 16 + 12));
        }
        p16out[i] = p16 < plo ? plo : (p16 > phi ? phi : p16);
        k->p16last[i] = p16out[i];
    }
    return bad ? -1 : 0;
}

/* update for streams 0..n-1 with their bits y (each 0 or 1, checked by the callers), at
 * bit position bit of the byte at position step. */
TZ_CLONES static void update_core(Kernel *k, const i64 *y, i64 n, int bit, i64 step) {
    i64 ni = k->prm[P_NI], ncols = k->prm[P_NCOLS], cw = k->prm[P_CW];
    int shift = (int)k->prm[P_MIXSHIFT] + 4;
    i64 round = (i64)1 << (shift - 1);
    /* the mixer's rate in 16ths of 2**-mixer_shift (mixer_rate in numpy) */
    i64 decay = k->prm[P_MIXDECAY], rate = 16;
    if (decay) {
        rate = 16 * decay / (decay + k->prm[P_POS0] + step);
        if (rate < 8) rate = 8;
    }
    i64 xrate = k->prm[P_XRATE];
    u64 *t = (u64 *)k->t; /* adds wrap, as numpy's int64 adds do */
    for (i64 i = 0; i < n; i++) {
        const i64 *idx = k->idx + i * ncols, *val = k->val + i * ncols, *pc = k->pcl + i * cw;
        i64 ns = k->prm[P_NSETS], next = k->prm[P_NEXT];
        const i64 *x = k->x + i * (ns * ni + next), *wbase = k->wbase + i * ns;
        i64 yi = y[i];
        /* Counters (contexts, match, APM points): toward the bit by 1/(count + offset),
         * the contexts' and match's offset first, then the APM points'. */
        for (i64 j = 0; j < cw; j++) {
            const i64 *recip = j < k->prm[P_CAPM] ? k->recip : k->recip_apm;
            t[idx[j]] += (u64)counter_delta(val[j], pc[j], yi, recip, k->lim[j]);
        }
        i64 apm_lim = k->lim[cw - 1];
        if (k->prm[P_APM3]) /* its points like the other APMs' */
            apm_pair_update(k->apm3, k->a3idx[i], k->a3val + 2 * i, yi, k->recip_apm, apm_lim);
        if (k->prm[P_APM4]) {
            apm_pair_update(k->apm4, k->a4idx[i], k->a4val + 2 * i, yi, k->recip_apm, apm_lim);
            k->misses[i] = ((k->misses[i] << 1) | ((k->p16last[i] >= 32768) != yi)) & 0xFFFF;
        }
        /* Mixer: gradient step on coding cost, err in 12-bit probability units times the
         * rate (16ths), so shift is mixer_shift + 4. */
        i64 err = ((yi << 12) - k->p12[i]) * rate;
        u64 dw[ni], dwx[ni];
        for (i64 m = 0; m < ni; m++) dw[m] = (u64)asr((i64)((u64)x[m] * (u64)err + (u64)round), shift);
        /* the extra sets (after A and B) at mixer_extra_rate sixteenths of that rate */
        const u64 *dx = dw;
        if (xrate != 16) {
            i64 errx = ((yi << 12) - k->p12[i]) * (rate * xrate >> 4);
            for (i64 m = 0; m < ni; m++)
                dwx[m] = (u64)asr((i64)((u64)x[m] * (u64)errx + (u64)round), shift);
            dx = dwx;
        }
        for (i64 s = 0; s < ns; s++) {
            u64 *w = t + wbase[s];
            const u64 *d = s < 2 ? dw : dx;
            for (i64 m = 0; m < ni; m++) w[m] += d[m];
        }
        if (next)
            t[k->prm[P_EXTW] + k->c0[i]] +=
                (u64)asr((i64)((u64)x[ns * ni] * (u64)err + (u64)round), shift);
    }
    /* Partial byte and nibble; the match stays on only while its bits were right. */
    for (i64 i = 0; i < n; i++) {
        k->mok[i] = k->mok[i] && k->ebit[i * 8 + bit] == y[i];
        k->c0[i] = (k->c0[i] << 1) | y[i];
        k->c0n[i] = (k->c0n[i] << 1) | y[i];
    }
    if (bit + 1 == 4) {
        for (i64 i = 0; i < n; i++) {
            k->c0n[i] = 1;
            nibble_slots(k, i, k->c0[i] - 15); /* 1 + the high nibble */
        }
    } else if (bit + 1 == 8) {
        i64 pos = k->prm[P_POS0] + step; /* positions go on across frames (carry_history) */
        end_byte(k, n, pos);
        for (i64 i = 0; i < n; i++) {
            k->c0[i] = 1;
            k->c0n[i] = 1;
            byte_contexts(k, i, pos + 1);
        }
    }
}

static PyObject *Kernel_predict(Kernel *k, PyObject *args) {
    Py_ssize_t n, bit, step;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "nnnw*", &n, &bit, &step, &out)) return NULL;
    if (n < 0 || n > k->prm[P_B] || bit < 0 || bit > 7 || out.len < n * 2 * 4 ||
        out.itemsize != 4) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "Kernel.predict: bad n, bit or output buffer");
        return NULL;
    }
    uint32_t *tab = out.buf;
    int rc = predict_core(k, n, (int)bit, step, k->scratch);
    for (i64 i = 0; i < n; i++) {
        tab[i * 2 + 1] = (uint32_t)k->scratch[i];
        tab[i * 2] = (uint32_t)(65536 - k->scratch[i]);
    }
    PyBuffer_Release(&out);
    if (rc) return bad_state();
    Py_RETURN_NONE;
}

static PyObject *Kernel_set_ext(Kernel *k, PyObject *args) {
    PyObject *arr;
    Py_ssize_t first;
    if (!PyArg_ParseTuple(args, "On", &arr, &first)) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(arr, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    i64 b = k->prm[P_B] > 0 ? k->prm[P_B] : 1;
    /* int64 ('q'/'l') or uint32 ('I'/'L' of 4 bytes) entries */
    char f = v.format ? v.format[v.format[0] == '<' || v.format[0] == '=' ? 1 : 0] : 'B';
    int u32 = v.itemsize == 4 && (f == 'I' || f == 'L');
    int i64ok = v.itemsize == 8 && (f == 'q' || f == 'l');
    if (!(u32 || i64ok) || v.len % (b * 256 * v.itemsize) || first < 0) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError,
                        "Kernel.set_ext: want (B, K, 256) int64 or uint32 tables");
        return NULL;
    }
    if (k->ext_held) PyBuffer_Release(&k->ext);
    k->ext = v;
    k->ext_held = 1;
    k->ext_u32 = u32;
    k->ext_k = v.len / (b * 256 * v.itemsize);
    k->ext_first = first;
    Py_RETURN_NONE;
}

static PyObject *Kernel_update(Kernel *k, PyObject *args) {
    Py_ssize_t n, bit, step;
    Py_buffer yb;
    if (!PyArg_ParseTuple(args, "y*nnn", &yb, &n, &bit, &step)) return NULL;
    if (n < 0 || n > k->prm[P_B] || bit < 0 || bit > 7 || yb.itemsize != 8 || yb.len < n * 8) {
        PyBuffer_Release(&yb);
        PyErr_SetString(PyExc_ValueError, "Kernel.update: bad n, bit or symbols");
        return NULL;
    }
    const i64 *y = yb.buf;
    for (i64 i = 0; i < n; i++)
        if (y[i] != 0 && y[i] != 1) {
            PyBuffer_Release(&yb);
            PyErr_Format(PyExc_ValueError, "Kernel.update: symbols must be bits, got %lld",
                         (long long)y[i]);
            return NULL;
        }
    update_core(k, y, n, (int)bit, step);
    PyBuffer_Release(&yb);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ whole-frame loops
 *
 * Why: with predict and update compiled, the Python loop around them (one predict, one
 * update and the coder's numpy step per bit) became the cost: ~70 us per step, whatever
 * the number of streams. These loops run steps t0..t1 of a frame in C, with the binary
 * rANS step of coder/rans.py (freq_bits = 16) fused in; the Python loop stays the
 * reference and tests compare archives bit for bit.
 *
 * grid: (B, T) uint8, row r = the bits of lockstep stream r; active: (t1 - t0,) int64,
 * the streams active at steps t0..t1 (non-increasing; changes only at byte boundaries, checked
 * by the caller); the frame starts at step 0 right after begin(B). */

#define RANS_L ((i64)1 << 16)

typedef struct {
    Py_buffer grid, active;
    i64 T, t0, t1;
} Run;

static int run_open(Kernel *k, Run *r, PyObject *grid, PyObject *active, Py_ssize_t T,
                    Py_ssize_t t0, Py_ssize_t t1, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    r->grid.obj = r->active.obj = NULL;
    if (PyObject_GetBuffer(grid, &r->grid, flags) < 0) return -1;
    if (PyObject_GetBuffer(active, &r->active, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&r->grid);
        return -1;
    }
    r->T = T, r->t0 = t0, r->t1 = t1;
    i64 b = k->prm[P_B];
    if (r->grid.itemsize != 1 || r->active.itemsize != 8 || T < 0 || t0 < 0 || t1 < t0 ||
        t1 > T || r->grid.len < b * T || r->active.len < (t1 - t0) * 8) {
        PyErr_SetString(PyExc_ValueError, "Kernel run: bad grid, active counts or step range");
        return -1;
    }
    const i64 *act = r->active.buf;
    for (i64 t = 0; t < t1 - t0; t++)
        if (act[t] < 0 || act[t] > b) {
            PyErr_SetString(PyExc_ValueError, "Kernel run: active count out of range");
            return -1;
        }
    return 0;
}

static void run_close(Run *r) {
    if (r->grid.obj) PyBuffer_Release(&r->grid);
    if (r->active.obj) PyBuffer_Release(&r->active);
}

/* update with step t's bits of streams 0..n-1 (read from the grid); -1 if one is not a
 * bit (no Python call: encode_run runs it without the GIL). */
static int learn_bits(Kernel *k, const uint8_t *grid, i64 T, i64 t, i64 n) {
    for (i64 i = 0; i < n; i++) {
        i64 y = grid[i * T + t];
        if (y > 1) return -1;
        k->y[i] = y;
    }
    update_core(k, k->y, n, (int)(t & 7), t >> 3);
    return 0;
}

static PyObject *not_bits(void) {
    PyErr_SetString(PyExc_ValueError, "Kernel run: symbols must be bits");
    return NULL;
}

/* learn_bits, with ValueError when a symbol is not a bit */
static int learn_step(Kernel *k, const uint8_t *grid, i64 T, i64 t, i64 n) {
    if (learn_bits(k, grid, T, t, n) == 0) return 0;
    not_bits();
    return -1;
}

static PyObject *Kernel_encode_run(Kernel *k, PyObject *args) {
    PyObject *grid, *active;
    Py_ssize_t T, t0, t1;
    Py_buffer p16;
    if (!PyArg_ParseTuple(args, "OOw*nnn", &grid, &active, &p16, &T, &t0, &t1)) return NULL;
    Run r;
    PyObject *ret = NULL;
    i64 b = k->prm[P_B];
    if (run_open(k, &r, grid, active, T, t0, t1, 0) < 0) goto done;
    if (p16.itemsize != 2 || p16.len < T * b * 2) {
        PyErr_SetString(PyExc_ValueError, "Kernel.encode_run: p16 must be (T, B) uint16");
        goto done;
    }
    const uint8_t *g = r.grid.buf;
    const i64 *act = r.active.buf; /* act[t - t0]: steps t0..t1 */
    uint16_t *out = p16.buf;
    /* Without the GIL, so that a caller's thread can compute the next block's external
     * input meanwhile (CmTransformerPredictor.encode_frame). */
    int err = 0; /* 1: inconsistent state, 2: a symbol that is not a bit */
    Py_BEGIN_ALLOW_THREADS
    for (i64 t = t0; t < t1; t++) {
        i64 n = act[t - t0];
        if (predict_core(k, n, (int)(t & 7), t >> 3, k->scratch)) {
            err = 1;
            break;
        }
        for (i64 i = 0; i < n; i++) out[t * b + i] = (uint16_t)k->scratch[i];
        if (learn_bits(k, g, T, t, n)) {
            err = 2;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    if (err) {
        err == 1 ? bad_state() : not_bits();
        goto done;
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    run_close(&r);
    PyBuffer_Release(&p16);
    return ret;
}

/* The external input from an engine's stepper (_engine_step.h): the table of byte j of
 * a stream comes from an engine step whose input is the stream's byte j - 1 (BOS at
 * byte 0), which the decoder knows only once it has decoded that byte. */

/* The inputs of the step of byte j, streams 0..n-1: their bytes j - 1, the low byte of
 * the history word (BOS at byte 0). */
static void step_inputs(const Kernel *k, i64 j, i64 n, i64 bos, i64 *ids) {
    for (i64 i = 0; i < n; i++) ids[i] = j > 0 ? (i64)(k->h8[i] & 0xFF) : bos;
}

#if defined(__unix__) || defined(__APPLE__)
#define TZ_SPECULATE 1
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#endif

/* Speculative steps. The engine's step for byte j + 1 (~6 us) and cm's 8 bits of byte j
 * (~7 us) would each wait for the other. A helper thread runs the step of byte j + 1
 * while cm decodes byte j, on a guess of byte j (the match model's byte, else the
 * engine's likeliest): where the guess was right its table is ready, where wrong the
 * stream's step runs again with the decoded byte, overwriting the guess's key and value
 * (the slot of position j + 1, which no other position reads before it). The tables are
 * the stepper's for the decoded bytes either way: only the time depends on the guesses. */
typedef struct {
    TzStepper *st;
    i64 *guess;      /* the posted step's inputs, streams 0..n-1 */
    uint32_t *out;   /* where it writes their tables */
    i64 n, j;
#ifdef TZ_SPECULATE
    atomic_int state; /* SPEC_IDLE, SPEC_POSTED, SPEC_DONE, SPEC_QUIT */
    pthread_t thread;
#endif
    int running;
} Spec;

enum { SPEC_IDLE, SPEC_POSTED, SPEC_DONE, SPEC_QUIT };

#ifdef TZ_SPECULATE
static inline void spin_pause(unsigned *spins) {
    /* a few microseconds of spinning, then give the core away (a loaded machine) */
    if (++*spins < 4096) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    } else {
        sched_yield();
    }
}

static void *spec_worker(void *arg) {
    Spec *sp = arg;
    for (;;) {
        unsigned spins = 0;
        int s;
        while ((s = atomic_load_explicit(&sp->state, memory_order_acquire)) != SPEC_POSTED &&
               s != SPEC_QUIT)
            spin_pause(&spins);
        if (s == SPEC_QUIT) return NULL;
        sp->st->step(sp->st, sp->guess, 0, (int)sp->n, sp->j, sp->out);
        atomic_store_explicit(&sp->state, SPEC_DONE, memory_order_release);
    }
}

static void spec_wait_done(Spec *sp) {
    unsigned spins = 0;
    while (atomic_load_explicit(&sp->state, memory_order_acquire) != SPEC_DONE)
        spin_pause(&spins);
}
#endif

/* The table of byte j of streams 0..n-1 into k->ext_tab (and ext_first = j): from the
 * step posted during byte j - 1 where there is one (re-running the streams it guessed
 * wrong), else computed here; then, if byte j + 1 is in this run, the step of byte
 * j + 1 posted on guesses of byte j. */
static void ext_step(Kernel *k, Spec *sp, uint32_t *bufs[2], i64 *ids, i64 j, i64 n,
                     int post_next) {
    TzStepper *st = sp->st;
    step_inputs(k, j, n, st->V, ids);
    uint32_t *tab;
#ifdef TZ_SPECULATE
    if (sp->running && sp->j == j) {
        spec_wait_done(sp);
        tab = sp->out;
        for (i64 i = 0; i < n; i++)
            if (sp->guess[i] != ids[i])
                st->step(st, ids + i, (int)i, (int)i + 1, j, tab + i * 256);
        atomic_store_explicit(&sp->state, SPEC_IDLE, memory_order_relaxed);
        sp->j = -1;
    } else
#endif
    { /* (with a helper, only at a run's first byte: nothing is posted yet) */
        tab = bufs[0];
        st->step(st, ids, 0, (int)n, j, tab);
    }
    k->ext_tab = tab;
    k->ext_first = j;
#ifdef TZ_SPECULATE
    if (sp->running && post_next) {
        for (i64 i = 0; i < n; i++) {
            i64 v;
            if (k->mok[i]) {
                v = k->hist[k->mptr[i]];
            } else { /* the engine's likeliest byte (the first of equals) */
                const uint32_t *row = tab + i * 256;
                v = 0;
                for (int c = 1; c < 256; c++)
                    if (row[c] > row[v]) v = c;
            }
            sp->guess[i] = v;
        }
        sp->out = tab == bufs[0] ? bufs[1] : bufs[0];
        sp->n = n;
        sp->j = j + 1;
        atomic_store_explicit(&sp->state, SPEC_POSTED, memory_order_release);
    }
#else
    (void)post_next;
#endif
}

/* decode_run(grid, active, model_active, rows, x, cursor, limit, words, T, t0, t1,
 * stepper=None, speculate=0): with a stepper, the external input's table of every byte
 * is the stepper's, computed here before the byte's first bit (set_ext must have bound
 * a writable uint32 (B, 1, 256) array; t0 on a byte boundary); with speculate, a helper
 * thread runs the next byte's step meanwhile (Spec). */
static PyObject *Kernel_decode_run(Kernel *k, PyObject *args) {
    PyObject *grid, *active, *stepper = Py_None;
    Py_ssize_t T, t0, t1;
    int speculate = 0;
    Py_buffer mact, rows, xs, cursor, limit, words;
    if (!PyArg_ParseTuple(args, "OOy*y*w*w*y*y*nnn|Op", &grid, &active, &mact, &rows, &xs,
                          &cursor, &limit, &words, &T, &t0, &t1, &stepper, &speculate))
        return NULL;
    Run r;
    PyObject *ret = NULL;
    i64 nk = rows.len / 8, nw = words.len / 2;
    Spec sp;
    memset(&sp, 0, sizeof sp);
    sp.j = -1;
    uint32_t *bufs[2] = {NULL, NULL};
    i64 *ids = NULL;
    if (run_open(k, &r, grid, active, T, t0, t1, 1) < 0) goto done;
    if (stepper != Py_None) {
        sp.st = PyCapsule_GetPointer(stepper, TZ_STEPPER_CAPSULE);
        if (!sp.st) goto done;
        i64 b = k->prm[P_B];
        if (!k->prm[P_NEXT] || !k->ext_held || !k->ext_u32 || k->ext_k != 1 || k->ext.readonly ||
            k->ext.len != b * 256 * 4 || sp.st->V != 256 || sp.st->streams < b || t0 % 8) {
            PyErr_SetString(PyExc_ValueError,
                            "Kernel.decode_run: the stepper needs bound writable uint32 "
                            "(B, 1, 256) tables, an engine of B streams, t0 on a byte");
            goto done;
        }
        size_t nb = (size_t)(b > 0 ? b : 1);
        ids = PyMem_Malloc(nb * sizeof(i64));
        sp.guess = PyMem_Malloc(nb * sizeof(i64));
        bufs[0] = k->ext.buf;
        bufs[1] = PyMem_Malloc(nb * 256 * sizeof(uint32_t));
        if (!ids || !sp.guess || !bufs[1]) {
            PyErr_NoMemory();
            goto done;
        }
#ifdef TZ_SPECULATE
        if (speculate) {
            atomic_init(&sp.state, SPEC_IDLE);
            sp.running = pthread_create(&sp.thread, NULL, spec_worker, &sp) == 0;
        }
#endif
    }
    if (mact.itemsize != 8 || mact.len < (t1 - t0) * 8 || rows.itemsize != 8 || xs.itemsize != 8 ||
        cursor.itemsize != 8 || limit.itemsize != 8 || words.itemsize != 2 ||
        xs.len / 8 < nk || cursor.len / 8 < nk || limit.len / 8 < nk) {
        PyErr_SetString(PyExc_ValueError, "Kernel.decode_run: bad coder arrays");
        goto done;
    }
    /* act[t - t0], ma[t - t0]: steps t0..t1 */
    const i64 *act = r.active.buf, *ma = mact.buf;
    const i64 *row = rows.buf, *lim = limit.buf;
    i64 *x = xs.buf, *cur = cursor.buf;
    const uint16_t *w = words.buf;
    uint8_t *g = r.grid.buf;
    for (i64 j = 0; j < nk; j++)
        if (lim[j] < 0 || lim[j] >= nw || row[j] < 0 || row[j] >= k->prm[P_B]) {
            PyErr_SetString(PyExc_ValueError, "Kernel.decode_run: coder limits or rows out of range");
            goto done;
        }
    for (i64 t = t0; t < t1; t++) {
        i64 n = act[t - t0], m = ma[t - t0];
        if (sp.st && !(t & 7)) ext_step(k, &sp, bufs, ids, t >> 3, n, t + 8 < t1);
        if (predict_core(k, n, (int)(t & 7), t >> 3, k->scratch)) {
            bad_state();
            goto done;
        }
        if (m < 0 || m > nk || (m && row[m - 1] >= n)) {
            PyErr_SetString(PyExc_ValueError, "Kernel.decode_run: model streams not active");
            goto done;
        }
        /* The binary rANS decode step of StreamDecoder.decode (M = 2**16). */
        for (i64 j = 0; j < m; j++) {
            i64 p = k->scratch[row[j]], f0 = 65536 - p, xv = x[j];
            i64 slot = xv & 0xFFFF;
            i64 sym = slot >= f0;
            i64 xn = (sym ? p : f0) * (xv >> 16) + slot - (sym ? f0 : 0);
            if (xn < RANS_L) {
                i64 c = cur[j] < lim[j] ? cur[j] : lim[j];
                xn = (xn << 16) | w[c];
                cur[j] += 1;
            }
            x[j] = xn;
            g[row[j] * T + t] = (uint8_t)sym;
        }
        if (learn_step(k, g, T, t, n)) goto done;
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
#ifdef TZ_SPECULATE
    if (sp.running) { /* (a step is posted only for a byte of this run: none after the
                       * loop, maybe one after an error) */
        if (sp.j >= 0) spec_wait_done(&sp);
        atomic_store_explicit(&sp.state, SPEC_QUIT, memory_order_release);
        pthread_join(sp.thread, NULL);
    }
#endif
    k->ext_tab = NULL;
    PyMem_Free(ids);
    PyMem_Free(sp.guess);
    PyMem_Free(bufs[1]);
    run_close(&r);
    PyBuffer_Release(&mact);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&xs);
    PyBuffer_Release(&cursor);
    PyBuffer_Release(&limit);
    PyBuffer_Release(&words);
    return ret;
}

/* encode_binary(p16, grid, lengths, T): the payloads of coder/rans.py's encode_streams for
 * binary tables [65536 - p16, p16] (freq_bits = 16), one bytes object per grid row. */
static PyObject *encode_binary(PyObject *mod, PyObject *args) {
    Py_buffer p16, grid, lengths;
    Py_ssize_t T;
    if (!PyArg_ParseTuple(args, "y*y*y*n", &p16, &grid, &lengths, &T)) return NULL;
    PyObject *ret = NULL;
    uint16_t *buf = NULL;
    i64 b = lengths.len / 8;
    if (p16.itemsize != 2 || grid.itemsize != 1 || lengths.itemsize != 8 || T < 0 ||
        p16.len < T * b * 2 || grid.len < T * b) {
        PyErr_SetString(PyExc_ValueError, "encode_binary: bad arrays");
        goto done;
    }
    const uint16_t *p = p16.buf;
    const uint8_t *g = grid.buf;
    const i64 *len = lengths.buf;
    for (i64 s = 0; s < b; s++)
        if (len[s] < 0 || len[s] > T) {
            PyErr_SetString(PyExc_ValueError, "encode_binary: stream length out of range");
            goto done;
        }
    buf = PyMem_Malloc(2 * (size_t)(T + 2));
    ret = PyList_New(b);
    if (!buf || !ret) {
        Py_CLEAR(ret);
        PyErr_NoMemory();
        goto done;
    }
    for (i64 s = 0; s < b; s++) {
        PyObject *payload;
        if (len[s] == 0) {
            payload = PyBytes_FromStringAndSize(NULL, 0);
        } else {
            u64 x = (u64)RANS_L;
            i64 nw = 0; /* words emitted, written backwards from the end of buf */
            for (i64 t = len[s] - 1; t >= 0; t--) {
                u64 q = p[t * b + s], y = g[s * T + t];
                if (y > 1 || q < 1 || q > 65535) {
                    PyErr_SetString(PyExc_ValueError, "encode_binary: bad bit or probability");
                    Py_CLEAR(ret);
                    goto done;
                }
                u64 freq = y ? q : 65536 - q, start = y ? 65536 - q : 0;
                if (x >= freq << 16) {
                    buf[T + 1 - nw] = (uint16_t)(x & 0xFFFF);
                    nw++;
                    x >>= 16;
                }
                x = (x / freq) * 65536 + x % freq + start;
            }
            payload = PyBytes_FromStringAndSize(NULL, 4 + 2 * nw);
            if (payload) {
                uint8_t *o = (uint8_t *)PyBytes_AS_STRING(payload);
                for (int m = 0; m < 4; m++) o[m] = (uint8_t)(x >> (8 * m));
                for (i64 m = 0; m < nw; m++) { /* decoding order: increasing t */
                    uint16_t v = buf[T + 2 - nw + m];
                    o[4 + 2 * m] = (uint8_t)v;
                    o[5 + 2 * m] = (uint8_t)(v >> 8);
                }
            }
        }
        if (!payload) {
            Py_CLEAR(ret);
            goto done;
        }
        PyList_SET_ITEM(ret, s, payload);
    }
done:
    PyMem_Free(buf);
    PyBuffer_Release(&p16);
    PyBuffer_Release(&grid);
    PyBuffer_Release(&lengths);
    return ret;
}

static PyMethodDef Kernel_methods[] = {
    {"predict", (PyCFunction)Kernel_predict, METH_VARARGS,
     "predict(n, bit, step, out): the (n, 2) uint32 tables of streams 0..n-1 into out."},
    {"set_ext", (PyCFunction)Kernel_set_ext, METH_VARARGS,
     "set_ext(tables, first): the external input's tables (B, K, 256) int64 or uint32 "
     "for bytes first .. first + K - 1."},
    {"update", (PyCFunction)Kernel_update, METH_VARARGS,
     "update(y, n, bit, step): learn the bits y (n,) int64; per-nibble and per-byte work "
     "when the nibble or byte completes (step = position of the byte)."},
    {"encode_run", (PyCFunction)Kernel_encode_run, METH_VARARGS,
     "encode_run(grid, active, p16, T, t0, t1): steps t0..t1 of a frame (active: their "
     "active counts), known bits; "
     "P(1) of every step into p16 (T, B) uint16."},
    {"decode_run", (PyCFunction)Kernel_decode_run, METH_VARARGS,
     "decode_run(grid, active, model_active, rows, x, cursor, limit, words, T, t0, t1, "
     "stepper=None, speculate=False): (active, model_active: counts of steps t0..t1) "
     "steps t0..t1, decoding the bits of grid rows `rows` with binary rANS in place; "
     "with an engine's stepper capsule, each byte's external input comes from it "
     "(speculate: the next byte's step in a helper thread meanwhile)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tinyzip.model._cm_kernel.Kernel",
    .tp_basicsize = sizeof(Kernel),
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Kernel(arrays, params): predict/update bound to a ContextMixPredictor's arrays.",
    .tp_methods = Kernel_methods,
    .tp_init = (initproc)Kernel_init,
    .tp_new = PyType_GenericNew,
};

/* cap_counts(table, end, cap, checks_end): every counter of table[0:end] (int64, in place)
 * that has seen more than cap bits counts cap (ContextMixPredictor.cap_counts); below
 * checks_end, entry 0 of every 16 is a slot's check, no counter, and stays. */
static PyObject *cap_counts(PyObject *mod, PyObject *args) {
    Py_buffer tb;
    Py_ssize_t end, cap, checks_end;
    (void)mod;
    if (!PyArg_ParseTuple(args, "w*nnn", &tb, &end, &cap, &checks_end)) return NULL;
    if (tb.itemsize != 8 || end < 0 || end > tb.len / 8 || cap < 0 || cap > N_MASK ||
        checks_end < 0 || checks_end > end) {
        PyBuffer_Release(&tb);
        PyErr_SetString(PyExc_ValueError, "cap_counts: bad table, end, cap or checks_end");
        return NULL;
    }
    i64 *t = tb.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t m = 0; m < end; m++) {
        i64 v = t[m], cnt = v & N_MASK;
        if (cnt > cap && (m >= checks_end || m % 16)) t[m] = v - cnt + cap;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&tb);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"encode_binary", encode_binary, METH_VARARGS,
     "encode_binary(p16, grid, lengths, T): rANS payloads of binary streams (see rans.py)."},
    {"cap_counts", cap_counts, METH_VARARGS,
     "cap_counts(table, end, cap, checks_end): counters of table[:end] count at most cap "
     "bits seen."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cm_kernel",
    "Compiled per-bit predict/update of ContextMixPredictor (see _cm_kernel.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__cm_kernel(void) {
    init_byteclass();
    if (PyType_Ready(&KernelType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(m, "Kernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(&KernelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
