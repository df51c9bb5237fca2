#define _GNU_SOURCE
#include "vdisk_support.h"
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <string.h>

static uint32_t crc_table[8][256];
static int crc_table_ready;

static void crc_table_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
    __atomic_store_n(&crc_table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t len) {
    if (!__atomic_load_n(&crc_table_ready, __ATOMIC_ACQUIRE)) crc_table_init();
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^ crc_table[5][(w >> 16) & 0xff] ^
              crc_table[4][(w >> 24) & 0xff] ^ crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
              crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of three cycles and a throughput of one: three
// streams over adjacent thirds of a span run in parallel, and their crcs are combined by
// shifting the earlier ones over the bytes that follow (multiplying by x^(8n) mod P, done
// with tables built once). The method is Mark Adler's (crc32c.c, zlib licence).
enum { crc_long = 8192, crc_short = 256 };
static uint32_t crc_shift_long[4][256], crc_shift_short[4][256];
static pthread_once_t crc_shift_once = PTHREAD_ONCE_INIT;

// GF(2) matrix (32 columns) times vector.
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1) sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat) {
    for (int n = 0; n < 32; n++) square[n] = gf2_times(mat, mat[n]);
}

// Tables applying `len` (a power of two, at least 4) zero bytes to a crc, a byte of it at a time.
static void crc_shift_tables(uint32_t table[4][256], size_t len) {
    uint32_t odd[32], even[32];
    odd[0] = 0x82F63B78u;  // one zero bit
    for (int n = 1; n < 32; n++) odd[n] = 1u << (n - 1);
    gf2_square(even, odd);  // two zero bits
    gf2_square(odd, even);  // four zero bits
    uint32_t *op = odd;
    // Squaring doubles the bits: eight zero bits (one byte) after the next, then 2, 4, ... bytes.
    for (;;) {
        gf2_square(even, odd);
        op = even;
        len >>= 1;
        if (len == 0) break;
        gf2_square(odd, even);
        op = odd;
        len >>= 1;
        if (len == 0) break;
    }
    for (uint32_t n = 0; n < 256; n++) {
        table[0][n] = gf2_times(op, n);
        table[1][n] = gf2_times(op, n << 8);
        table[2][n] = gf2_times(op, n << 16);
        table[3][n] = gf2_times(op, n << 24);
    }
}

static void crc_shift_init(void) {
    crc_shift_tables(crc_shift_long, crc_long);
    crc_shift_tables(crc_shift_short, crc_short);
}

static inline uint32_t crc_shift(uint32_t table[4][256], uint32_t crc) {
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^ table[2][(crc >> 16) & 0xff] ^ table[3][crc >> 24];
}

__attribute__((target("sse4.2")))
static inline uint64_t crc_word(uint64_t c, const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    return __builtin_ia32_crc32di(c, w);
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len) {
    pthread_once(&crc_shift_once, crc_shift_init);
    uint64_t c0 = crc;
    for (int pass = 0; pass < 2; pass++) {
        size_t span = pass == 0 ? crc_long : crc_short;
        uint32_t (*table)[256] = pass == 0 ? crc_shift_long : crc_shift_short;
        while (len >= 3 * span) {
            uint64_t c1 = 0, c2 = 0;
            for (const unsigned char *end = p + span; p < end; p += 8) {
                c0 = crc_word(c0, p);
                c1 = crc_word(c1, p + span);
                c2 = crc_word(c2, p + 2 * span);
            }
            c0 = crc_shift(table, (uint32_t)c0) ^ c1;
            c0 = crc_shift(table, (uint32_t)c0) ^ c2;
            p += 2 * span;
            len -= 3 * span;
        }
    }
    while (len >= 8) {
        c0 = crc_word(c0, p);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c0;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t vdisk_crc32c(uint32_t crc, const void *data, size_t len) {
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_hw(crc, data, len);
#endif
    return ~crc32c_soft(crc, data, len);
}

int vdisk_is_zero(const void *data, size_t len) {
    const unsigned char *p = data;
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 64 <= len; i += 64) {
        uint64_t w[8];
        memcpy(w, p + i, 64);
        acc |= w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
        if (acc) return 0;
    }
    for (; i < len; i++) acc |= p[i];
    return acc == 0;
}

// Fixed thresholds: large temporaries (flush maps, batch buffers) come from mmap and go back
// to the kernel when freed, instead of glibc raising its threshold and keeping them resident.
void vdisk_limit_malloc_arenas(int n) {
    mallopt(M_ARENA_MAX, n);
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    mallopt(M_TRIM_THRESHOLD, 1 << 20);
}

void vdisk_release_free_memory(void) { malloc_trim(0); }

int vdisk_allocate_keeping_size(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}
