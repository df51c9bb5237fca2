#ifndef VDISK_SUPPORT_H
#define VDISK_SUPPORT_H
#include <stddef.h>
#include <stdint.h>

/// CRC-32C (Castagnoli) of `len` bytes, continuing from `crc` (start with 0).
/// Why C: the SSE4.2 crc32 instruction is an intrinsic Swift cannot reach; none of the
/// system libraries we link (libcrypto, liblz4, libfuse3) exports CRC-32C.
uint32_t vdisk_crc32c(uint32_t crc, const void *data, size_t len);

/// Whether every byte of `len` bytes is zero. Why C: a word-at-a-time scan the optimiser
/// vectorises; zero blocks are detected on ingest without hashing them.
int vdisk_is_zero(const void *data, size_t len);

/// Caps glibc's malloc arenas at `n`. Why C: mallopt and M_ARENA_MAX are not exported by
/// Swift's Glibc module. A mount runs many FUSE threads; an arena per thread keeps freed
/// memory apart and lets RSS climb past the configured caches.
void vdisk_limit_malloc_arenas(int n);

/// Hands memory malloc holds free back to the kernel. Why C: malloc_trim is not exported by
/// Swift's Glibc module. Called after each flush, whose large transient buffers would
/// otherwise stay in RSS.
void vdisk_release_free_memory(void);

/// fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length): 0, or -1 with errno set. Why C:
/// fallocate is declared only under _GNU_SOURCE, which Swift's Glibc module does not set.
/// The journal allocates its disk space ahead with it, so a full disk fails before a write.
int vdisk_allocate_keeping_size(int fd, int64_t offset, int64_t length);

#endif
