#ifndef VDISKFS_CFUSE_SHIM_H
#define VDISKFS_CFUSE_SHIM_H
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#endif
