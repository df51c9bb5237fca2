// The loop configuration object (fuse_loop_cfg_*) is the 3.12+ API: compile the shim against it.
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312
#include "vdisk_fuse.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>

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
