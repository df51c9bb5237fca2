#ifndef VDISK_FUSE_H
#define VDISK_FUSE_H

// Thin C shim over libfuse3's low-level API for the Swift driver (VDiskFUSE).
// One `vdisk_fuse_*` wrapper per thing Swift cannot call or name directly; no logic.

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 34
#endif
#include <fuse_lowlevel.h>
#include <stddef.h>
#include <stdint.h>

// Constants from headers Swift's Glibc module does not expose (need _GNU_SOURCE or linux/*.h).
// Swift imports `static const` values where it may not import the macros.
static const int VDISK_FALLOC_FL_KEEP_SIZE = 0x01;  // linux/falloc.h
static const int VDISK_FALLOC_FL_PUNCH_HOLE = 0x02;
static const int VDISK_FALLOC_FL_ZERO_RANGE = 0x10;
static const unsigned VDISK_RENAME_NOREPLACE = 1;   // linux/fs.h
static const unsigned VDISK_RENAME_EXCHANGE = 2;
static const int VDISK_SEEK_DATA = 3;               // unistd.h with _GNU_SOURCE
static const int VDISK_SEEK_HOLE = 4;

// O_DIRECT differs between architectures and needs _GNU_SOURCE: the shim, built with it, exports it.
extern const int vdisk_o_direct;

// FUSE_ARGS_INIT is a macro (brace initializer).
struct fuse_args vdisk_fuse_args_init(int argc, char **argv);

// fuse_session_new takes sizeof(struct fuse_lowlevel_ops), which Swift must not guess
// (the struct grows between releases), and it is a versioned macro in libfuse >= 3.17.
struct fuse_session *vdisk_fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *ops,
                                            void *userdata);

// fuse_session_loop_mt is a versioned macro whose config type depends on FUSE_USE_VERSION;
// the shim builds the (3.12+) fuse_loop_config with clone_fd, max_idle_threads and max_threads.
int vdisk_fuse_session_loop_mt(struct fuse_session *se, int clone_fd, unsigned max_idle_threads,
                               unsigned max_threads);

// fuse_log_func_t receives a va_list, which Swift cannot format: the shim formats each message
// into one line and passes it to `sink` (NULL restores libfuse's default stderr logger).
void vdisk_fuse_set_log_sink(void (*sink)(int level, const char *message));

// The bitfields of struct fuse_file_info (direct_io, keep_cache, ...) are set through these
// so the Swift side does not depend on how the importer lays out bitfields.
void vdisk_fuse_file_info_set_direct_io(struct fuse_file_info *fi, int on);
void vdisk_fuse_file_info_set_keep_cache(struct fuse_file_info *fi, int on);

// libfuse 3.14 cannot ask for FUSE_HANDLE_KILLPRIV_V2 (its INIT reply only carries the
// capabilities it knows). Without it the kernel sends getxattr("security.capability") before
// every write to a file system that implements getxattr: a second round trip per write. This
// installs libfuse's custom I/O on the mounted session's device: reads note the kernel's INIT
// request, and the INIT reply gets the flag when the kernel offered it. The file system then
// clears set-user-ID and set-group-ID bits itself on write, truncate and chown.
// Call after fuse_session_mount. Returns 0 or a negative errno.
int vdisk_fuse_session_request_killpriv_v2(struct fuse_session *se);

#endif
