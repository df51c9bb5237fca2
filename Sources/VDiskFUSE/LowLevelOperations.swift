import CFuseShim
import Glibc

/// The driver a request is for: the session's user data.
private func driver(_ req: fuse_req_t?) -> FileSystemDriver {
    Unmanaged<FileSystemDriver>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
}

/// The `fuse_lowlevel_ops` table: `@convention(c)` callbacks that find the
/// ``FileSystemDriver`` through the session's user data and call its method.
///
/// Not set, so answered by libfuse or the kernel: `access` (the mount uses
/// `default_permissions`), `getlk`/`setlk`/`flock` (the kernel keeps POSIX, OFD and flock
/// locks locally), `readlink` (there are no symbolic links), `ioctl`, `poll`, `bmap`.
enum LowLevelOperations {
    static func make() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            guard let userdata, let conn else { return }
            Unmanaged<FileSystemDriver>.fromOpaque(userdata).takeUnretainedValue().onInit?(conn)
        }
        ops.lookup = { req, parent, name in driver(req).lookup(req, parent, name) }
        ops.forget = { req, node, n in driver(req).forget(req, node, n) }
        ops.forget_multi = { req, count, list in driver(req).forgetMulti(req, count, list) }
        ops.getattr = { req, node, _ in driver(req).getattr(req, node) }
        ops.setattr = { req, node, attr, toSet, _ in driver(req).setattr(req, node, attr, toSet) }
        ops.mknod = { req, parent, name, mode, _ in driver(req).mknod(req, parent, name, mode) }
        ops.mkdir = { req, parent, name, mode in driver(req).mkdir(req, parent, name, mode) }
        ops.unlink = { req, parent, name in driver(req).unlink(req, parent, name) }
        ops.rmdir = { req, parent, name in driver(req).rmdir(req, parent, name) }
        ops.rename = { req, parent, name, newParent, newName, flags in
            driver(req).rename(req, parent, name, newParent, newName, flags)
        }
        ops.create = { req, parent, name, mode, fi in driver(req).create(req, parent, name, mode, fi) }
        ops.open = { req, node, fi in driver(req).open(req, node, fi) }
        ops.read = { req, node, size, offset, _ in driver(req).read(req, node, size, offset) }
        ops.write = { req, node, data, size, offset, fi in driver(req).write(req, node, data, size, offset, fi) }
        ops.flush = { req, _, _ in driver(req).flush(req) }
        ops.release = { req, node, fi in driver(req).release(req, node, fi) }
        ops.fsync = { req, node, dataOnly, _ in driver(req).fsync(req, node, dataOnly != 0) }
        ops.fallocate = { req, node, mode, offset, length, fi in driver(req).fallocate(req, node, mode, offset, length, fi) }
        ops.lseek = { req, node, offset, whence, _ in driver(req).lseek(req, node, offset, whence) }
        ops.copy_file_range = { req, source, sourceOffset, _, target, targetOffset, targetFI, length, flags in
            driver(req).copyFileRange(req, source, sourceOffset, target, targetOffset, targetFI, length, flags)
        }
        ops.opendir = { req, node, fi in driver(req).opendir(req, node, fi) }
        ops.readdir = { req, node, size, offset, fi in driver(req).readdir(req, node, size, offset, fi, plus: false) }
        ops.readdirplus = { req, node, size, offset, fi in driver(req).readdir(req, node, size, offset, fi, plus: true) }
        ops.releasedir = { req, _, fi in driver(req).releasedir(req, fi) }
        ops.fsyncdir = { req, _, _, _ in driver(req).fsyncdir(req) }
        ops.statfs = { req, _ in driver(req).statfs(req) }
        ops.getxattr = { req, node, name, size in driver(req).getxattr(req, node, name, size) }
        ops.listxattr = { req, node, size in driver(req).listxattr(req, node, size) }
        ops.setxattr = { req, node, _, _, _, _ in driver(req).changeXattr(req, node) }
        ops.removexattr = { req, node, _ in driver(req).changeXattr(req, node) }
        // Images only: no symbolic or hard links (EPERM, as on file systems without them).
        ops.symlink = { req, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.link = { req, _, _, _ in fuse_reply_err(req, EPERM) }
        return ops
    }
}
