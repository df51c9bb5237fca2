// The loop configuration object (fuse_loop_cfg_*) is the 3.12+ API: compile the shim against it.
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312
#include "vdisk_fuse.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/uio.h>
#include <unistd.h>

const int vdisk_o_direct = O_DIRECT;

struct fuse_args vdisk_fuse_args_init(int argc, char **argv) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    return args;
}

struct fuse_session *vdisk_fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *ops,
                                            void *userdata) {
    return fuse_session_new(args, ops, sizeof(*ops), userdata);
}

int vdisk_fuse_session_loop_mt(struct fuse_session *se, int clone_fd, unsigned max_idle_threads,
                               unsigned max_threads) {
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (config == NULL) return -1;
    fuse_loop_cfg_set_clone_fd(config, (unsigned)clone_fd);
    fuse_loop_cfg_set_idle_threads(config, max_idle_threads);
    fuse_loop_cfg_set_max_threads(config, max_threads);
    int result = fuse_session_loop_mt(se, config);
    fuse_loop_cfg_destroy(config);
    return result;
}

static void (*log_sink)(int, const char *);

static void log_to_sink(enum fuse_log_level level, const char *fmt, va_list ap) {
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    log_sink((int)level, line);
}

void vdisk_fuse_set_log_sink(void (*sink)(int level, const char *message)) {
    log_sink = sink;
    fuse_set_log_func(sink ? log_to_sink : NULL);
}

void vdisk_fuse_file_info_set_direct_io(struct fuse_file_info *fi, int on) { fi->direct_io = on ? 1 : 0; }
void vdisk_fuse_file_info_set_keep_cache(struct fuse_file_info *fi, int on) { fi->keep_cache = on ? 1 : 0; }

// INIT comes once per session, first: its unique id and whether the kernel offered the flag.
static _Atomic uint64_t init_unique;
static _Atomic int init_offers_killpriv_v2;

static ssize_t killpriv_read(int fd, void *buf, size_t len, void *userdata) {
    (void)userdata;
    ssize_t n = read(fd, buf, len);
    if (n >= (ssize_t)(sizeof(struct fuse_in_header) + offsetof(struct fuse_init_in, flags) + sizeof(uint32_t))) {
        const struct fuse_in_header *in = buf;
        if (in->opcode == FUSE_INIT) {
            const struct fuse_init_in *init = (const void *)(in + 1);
            atomic_store(&init_offers_killpriv_v2, (init->flags & FUSE_HANDLE_KILLPRIV_V2) != 0);
            atomic_store(&init_unique, in->unique);
        }
    }
    return n;
}

static ssize_t killpriv_writev(int fd, struct iovec *iov, int count, void *userdata) {
    (void)userdata;
    uint64_t unique = atomic_load(&init_unique);
    if (unique != 0 && count >= 2 && iov[0].iov_len >= sizeof(struct fuse_out_header)
        && iov[1].iov_len >= offsetof(struct fuse_init_out, flags) + sizeof(uint32_t)) {
        const struct fuse_out_header *out = iov[0].iov_base;
        if (out->unique == unique && out->error == 0 && atomic_load(&init_offers_killpriv_v2)) {
            struct fuse_init_out *reply = iov[1].iov_base;
            reply->flags |= FUSE_HANDLE_KILLPRIV_V2;
            atomic_store(&init_unique, 0);
        }
    }
    return writev(fd, iov, count);
}

int vdisk_fuse_session_request_killpriv_v2(struct fuse_session *se) {
    static const struct fuse_custom_io io = {.read = killpriv_read, .writev = killpriv_writev};
    return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}
