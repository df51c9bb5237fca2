import CFuseShim
import Glibc
import Synchronization
import VDiskStore

/// Serves FUSE low-level requests from a ``Volume``: one method per operation, called by the
/// `@convention(c)` callbacks of ``LowLevelOperations`` on libfuse's worker threads.
///
/// Node IDs are the inode numbers. Every error is answered with `StoreError.errno`; any other
/// error with EIO. File handles (`fh`) of images carry the open flags (O_SYNC/O_DSYNC handles
/// are synchronized after each write); directory handles point to a ``DirectoryHandle``.
final class FileSystemDriver: @unchecked Sendable {
    let volume: Volume
    /// Seconds the kernel may cache attributes and names. All changes go through this mount,
    /// so the kernel's caches stay coherent; the timeout only bounds staleness of `st_blocks`
    /// (which the background flusher changes).
    let timeout: Double
    /// Called once, in the `init` request, before the kernel gets the reply.
    var onInit: ((UnsafeMutablePointer<fuse_conn_info>) -> Void)?

    let lookups = LookupCounts()
    /// Open file handles with write access, per node (rollback and trim refuse such images).
    let writers = Mutex<[NodeID: Int]>([:])
    private let readBuffers = ThreadBuffer()

    init(volume: Volume, timeout: Double = 1) {
        self.volume = volume
        self.timeout = timeout
    }

    // MARK: replies

    /// Answers `req` with the errno of `error`; errors that are not the caller's are logged.
    func fail(_ req: fuse_req_t?, _ error: any Error, _ what: StaticString) {
        let code: Int32
        if let e = error as? StoreError {
            code = e.errno
            if code == EIO { log("vdiskfs: \(what): \(e.description)") }
        } else {
            code = EIO
            log("vdiskfs: \(what): \(error)")
        }
        fuse_reply_err(req, code)
    }

    private func entryParam(_ a: NodeAttributes) -> fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = a.node
        e.generation = 1
        e.attr = a.stat
        e.attr_timeout = timeout
        e.entry_timeout = timeout
        return e
    }

    /// Replies with an entry, counting the lookup the kernel now holds.
    private func replyEntry(_ req: fuse_req_t?, _ a: NodeAttributes) {
        var e = entryParam(a)
        lookups.add(a.node)
        if fuse_reply_entry(req, &e) != 0 { forgetCounted(a.node, 1) }  // interrupted: the kernel did not take it
    }

    private func forgetCounted(_ node: NodeID, _ n: UInt64) {
        if lookups.remove(node, n) { volume.forget(node) }
    }

    private func name(_ p: UnsafePointer<CChar>?) -> String? {
        guard let p else { return nil }
        return String(validatingCString: p)
    }

    private func caller(_ req: fuse_req_t?) -> (uid: UInt32, gid: UInt32) {
        guard let ctx = fuse_req_ctx(req) else { return (0, 0) }
        return (ctx.pointee.uid, ctx.pointee.gid)
    }

    // MARK: names

    func lookup(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ rawName: UnsafePointer<CChar>?) {
        guard let name = name(rawName) else { fuse_reply_err(req, ENOENT); return }
        do { replyEntry(req, try volume.lookup(parent: parent, name: name)) } catch { fail(req, error, "lookup") }
    }

    func forget(_ req: fuse_req_t?, _ node: fuse_ino_t, _ n: UInt64) {
        forgetCounted(node, n)
        fuse_reply_none(req)
    }

    func forgetMulti(_ req: fuse_req_t?, _ count: Int, _ list: UnsafeMutablePointer<fuse_forget_data>?) {
        if let list {
            for i in 0..<count { forgetCounted(list[i].ino, list[i].nlookup) }
        }
        fuse_reply_none(req)
    }

    func getattr(_ req: fuse_req_t?, _ node: fuse_ino_t) {
        do {
            var st = try volume.attributes(node).stat
            fuse_reply_attr(req, &st, timeout)
        } catch { fail(req, error, "getattr") }
    }

    func setattr(_ req: fuse_req_t?, _ node: fuse_ino_t, _ attr: UnsafeMutablePointer<Glibc.stat>?, _ toSet: Int32) {
        guard let st = attr?.pointee else { fuse_reply_err(req, EINVAL); return }
        var changes = AttributeChanges()
        var any = false
        if toSet & FUSE_SET_ATTR_MODE != 0 { changes.mode = st.st_mode; any = true }
        if toSet & FUSE_SET_ATTR_UID != 0 { changes.uid = st.st_uid; any = true }
        if toSet & FUSE_SET_ATTR_GID != 0 { changes.gid = st.st_gid; any = true }
        if toSet & FUSE_SET_ATTR_SIZE != 0 {
            guard st.st_size >= 0 else { fuse_reply_err(req, EINVAL); return }
            changes.size = UInt64(st.st_size); any = true
        }
        if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 {
            changes.mtime = timespec.now.nanoseconds; any = true
        } else if toSet & FUSE_SET_ATTR_MTIME != 0 {
            changes.mtime = st.st_mtim.nanoseconds; any = true
        }
        if toSet & FUSE_SET_ATTR_CTIME != 0 { changes.ctime = st.st_ctim.nanoseconds; any = true }
        // FATTR_KILL_SUIDGID (libfuse's name predates it): a truncate by a caller without CAP_FSETID.
        if toSet & FUSE_SET_ATTR_KILL_SUID != 0 { changes.clearingSetID = true }
        // Access times are not kept: an atime-only change succeeds without effect.
        do {
            var reply = (any ? try volume.setAttributes(node, changes) : try volume.attributes(node)).stat
            fuse_reply_attr(req, &reply, timeout)
        } catch { fail(req, error, "setattr") }
    }

    func mkdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ rawName: UnsafePointer<CChar>?, _ mode: mode_t) {
        guard let name = name(rawName) else { fuse_reply_err(req, EINVAL); return }
        let who = caller(req)
        do {
            replyEntry(req, try volume.makeDirectory(parent: parent, name: name, mode: S_IFDIR | (mode & 0o7777),
                                                     uid: who.uid, gid: who.gid))
        } catch { fail(req, error, "mkdir") }
    }

    /// Only regular files (images) can be made; devices, FIFOs and sockets cannot.
    func mknod(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ rawName: UnsafePointer<CChar>?, _ mode: mode_t) {
        guard mode & S_IFMT == S_IFREG || mode & S_IFMT == 0 else { fuse_reply_err(req, EPERM); return }
        guard let name = name(rawName) else { fuse_reply_err(req, EINVAL); return }
        let who = caller(req)
        do {
            replyEntry(req, try volume.createImage(parent: parent, name: name, mode: S_IFREG | (mode & 0o7777),
                                                   uid: who.uid, gid: who.gid))
        } catch { fail(req, error, "mknod") }
    }

    func create(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ rawName: UnsafePointer<CChar>?, _ mode: mode_t,
                _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let fi else { fuse_reply_err(req, EINVAL); return }
        guard let name = name(rawName) else { fuse_reply_err(req, EINVAL); return }
        let who = caller(req)
        do {
            let a = try volume.createImage(parent: parent, name: name, mode: S_IFREG | (mode & 0o7777), uid: who.uid, gid: who.gid)
            try setUpHandle(fi, a.node)
            var e = entryParam(a)
            lookups.add(a.node)
            if fuse_reply_create(req, &e, fi) != 0 { forgetCounted(a.node, 1); closeHandle(a.node, fi) }
        } catch { fail(req, error, "create") }
    }

    func unlink(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ rawName: UnsafePointer<CChar>?) {
        guard let name = name(rawName) else { fuse_reply_err(req, ENOENT); return }
        do {
            try volume.unlink(parent: parent, name: name)
            fuse_reply_err(req, 0)
        } catch { fail(req, error, "unlink") }
    }

    func rmdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ rawName: UnsafePointer<CChar>?) {
        guard let name = name(rawName) else { fuse_reply_err(req, ENOENT); return }
        do {
            try volume.removeDirectory(parent: parent, name: name)
            fuse_reply_err(req, 0)
        } catch { fail(req, error, "rmdir") }
    }

    func rename(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ rawName: UnsafePointer<CChar>?, _ newParent: fuse_ino_t,
                _ rawNewName: UnsafePointer<CChar>?, _ flags: UInt32) {
        guard flags & ~(VDISK_RENAME_NOREPLACE | VDISK_RENAME_EXCHANGE) == 0,
              flags != VDISK_RENAME_NOREPLACE | VDISK_RENAME_EXCHANGE else { fuse_reply_err(req, EINVAL); return }
        guard let name = name(rawName) else { fuse_reply_err(req, ENOENT); return }
        guard let newName = self.name(rawNewName) else { fuse_reply_err(req, EINVAL); return }
        do {
            try volume.rename(parent: parent, name: name, newParent: newParent, newName: newName,
                              noReplace: flags & VDISK_RENAME_NOREPLACE != 0, exchange: flags & VDISK_RENAME_EXCHANGE != 0)
            fuse_reply_err(req, 0)
        } catch { fail(req, error, "rename") }
    }

    // MARK: files

    /// Open flags kept in `fh`; O_DIRECT opens bypass the page cache (QEMU cache=none).
    /// Handles with write access are counted until released.
    /// On a shared store a write handle needs the image's lease (EBUSY when another host writes it).
    private func setUpHandle(_ fi: UnsafeMutablePointer<fuse_file_info>, _ node: NodeID) throws {
        if fi.pointee.flags & O_ACCMODE != O_RDONLY { try volume.openedForWriting(node) }
        fi.pointee.fh = UInt64(UInt32(bitPattern: fi.pointee.flags))
        vdisk_fuse_file_info_set_keep_cache(fi, 0)
        vdisk_fuse_file_info_set_direct_io(fi, fi.pointee.flags & vdisk_o_direct != 0 ? 1 : 0)
        if fi.pointee.flags & O_ACCMODE != O_RDONLY { writers.withLock { $0[node, default: 0] += 1 } }
    }

    /// The kernel let go of a handle set up by `setUpHandle`.
    private func closeHandle(_ node: NodeID, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let fi, Int32(truncatingIfNeeded: fi.pointee.fh) & O_ACCMODE != O_RDONLY else { return }
        volume.closedForWriting(node)
        writers.withLock { w in
            if let n = w[node], n > 1 { w[node] = n - 1 } else { w[node] = nil }
        }
    }

    /// Whether an open handle of `node` has write access.
    func isOpenForWriting(_ node: NodeID) -> Bool { writers.withLock { $0[node] != nil } }

    func open(_ req: fuse_req_t?, _ node: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let fi else { fuse_reply_err(req, EINVAL); return }
        do {
            let a = try volume.attributes(node)
            if a.isDirectory { fuse_reply_err(req, EISDIR); return }
            if a.readOnly && fi.pointee.flags & O_ACCMODE != O_RDONLY { fuse_reply_err(req, EROFS); return }
            try setUpHandle(fi, node)
            if fuse_reply_open(req, fi) != 0 { closeHandle(node, fi) }
        } catch { fail(req, error, "open") }
    }

    func read(_ req: fuse_req_t?, _ node: fuse_ino_t, _ size: Int, _ offset: off_t) {
        guard offset >= 0 else { fuse_reply_err(req, EINVAL); return }
        guard let buffer = readBuffers.get(size) else { fuse_reply_err(req, ENOMEM); return }
        do {
            let n = try volume.read(node, offset: UInt64(offset), into: buffer)
            fuse_reply_buf(req, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), n)
        } catch { fail(req, error, "read") }
    }

    func write(_ req: fuse_req_t?, _ node: fuse_ino_t, _ data: UnsafePointer<CChar>?, _ size: Int, _ offset: off_t,
               _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard offset >= 0 else { fuse_reply_err(req, EINVAL); return }
        do {
            // libfuse 3.14 drops the write's FUSE_WRITE_KILL_SUIDGID flag: a caller other than
            // root stands for one without CAP_FSETID.
            let n = try volume.write(node, offset: UInt64(offset), data: UnsafeRawBufferPointer(start: data, count: size),
                                     clearingSetID: caller(req).uid != 0)
            try synchronizeIfSync(node, fi)
            fuse_reply_write(req, n)
        } catch { fail(req, error, "write") }
    }

    /// O_SYNC and O_DSYNC handles make every write durable before it is acknowledged.
    private func synchronizeIfSync(_ node: NodeID, _ fi: UnsafeMutablePointer<fuse_file_info>?) throws {
        guard let fi else { return }
        let flags = Int32(truncatingIfNeeded: fi.pointee.fh)
        guard flags & O_DSYNC != 0 else { return }
        try volume.synchronize(node, dataOnly: flags & O_SYNC != O_SYNC)
    }

    func flush(_ req: fuse_req_t?) { fuse_reply_err(req, 0) }

    func release(_ req: fuse_req_t?, _ node: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        closeHandle(node, fi)
        fuse_reply_err(req, 0)
    }

    func fsync(_ req: fuse_req_t?, _ node: fuse_ino_t, _ dataOnly: Bool) {
        do {
            try volume.synchronize(node, dataOnly: dataOnly)
            fuse_reply_err(req, 0)
        } catch { fail(req, error, "fsync") }
    }

    /// Mode 0 and KEEP_SIZE allocate, PUNCH_HOLE|KEEP_SIZE punches, ZERO_RANGE zeroes.
    func fallocate(_ req: fuse_req_t?, _ node: fuse_ino_t, _ mode: Int32, _ offset: off_t, _ length: off_t,
                   _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard offset >= 0, length > 0 else { fuse_reply_err(req, EINVAL); return }
        let (o, l) = (UInt64(offset), UInt64(length))
        let keep = mode & VDISK_FALLOC_FL_KEEP_SIZE != 0
        do {
            switch mode & ~VDISK_FALLOC_FL_KEEP_SIZE {
            case 0: try volume.allocate(node, offset: o, length: l, keepSize: keep)
            case VDISK_FALLOC_FL_PUNCH_HOLE:
                guard keep else { fuse_reply_err(req, EOPNOTSUPP); return }
                try volume.punchHole(node, offset: o, length: l)
            case VDISK_FALLOC_FL_ZERO_RANGE: try volume.zeroRange(node, offset: o, length: l, keepSize: keep)
            default: fuse_reply_err(req, EOPNOTSUPP); return
            }
            try synchronizeIfSync(node, fi)
            fuse_reply_err(req, 0)
        } catch { fail(req, error, "fallocate") }
    }

    /// SEEK_DATA and SEEK_HOLE; the kernel handles SEEK_SET, SEEK_CUR and SEEK_END itself.
    func lseek(_ req: fuse_req_t?, _ node: fuse_ino_t, _ offset: off_t, _ whence: Int32) {
        guard whence == VDISK_SEEK_DATA || whence == VDISK_SEEK_HOLE else { fuse_reply_err(req, EINVAL); return }
        guard offset >= 0 else { fuse_reply_err(req, ENXIO); return }
        do {
            let at = try volume.seek(node, offset: UInt64(offset), data: whence == VDISK_SEEK_DATA)
            fuse_reply_lseek(req, off_t(clamping: at))
        } catch { fail(req, error, "lseek") }
    }

    func copyFileRange(_ req: fuse_req_t?, _ source: fuse_ino_t, _ sourceOffset: off_t, _ target: fuse_ino_t,
                       _ targetOffset: off_t, _ targetFI: UnsafeMutablePointer<fuse_file_info>?, _ length: Int, _ flags: Int32) {
        guard flags == 0 else { fuse_reply_err(req, EINVAL); return }
        guard sourceOffset >= 0, targetOffset >= 0 else { fuse_reply_err(req, EINVAL); return }
        do {
            let n = try volume.copyRange(from: source, offset: UInt64(sourceOffset), to: target, offset: UInt64(targetOffset),
                                         length: UInt64(length))
            try synchronizeIfSync(target, targetFI)
            fuse_reply_write(req, Int(n))
        } catch { fail(req, error, "copy_file_range") }
    }

    // MARK: directories

    func opendir(_ req: fuse_req_t?, _ node: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let fi else { fuse_reply_err(req, EINVAL); return }
        let handle = DirectoryHandle(node: node)
        do {
            try handle.reload(from: volume)
            fi.pointee.fh = handle.retainedHandle()
            if fuse_reply_open(req, fi) != 0 { DirectoryHandle.release(fi.pointee.fh) }
        } catch { fail(req, error, "opendir") }
    }

    /// readdir and readdirplus: fills at most `size` bytes of entries from `offset` on.
    /// readdirplus entries (except "." and "..") count as lookups.
    func readdir(_ req: fuse_req_t?, _ node: fuse_ino_t, _ size: Int, _ offset: off_t,
                 _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
        guard let fi, let handle = DirectoryHandle.from(fi.pointee.fh) else { fuse_reply_err(req, EBADF); return }
        guard offset >= 0 else { fuse_reply_err(req, EINVAL); return }
        do {
            if offset == 0 && handle.served { try handle.reload(from: volume) }  // rewinddir
        } catch { fail(req, error, "readdir"); return }
        guard let buffer = readBuffers.get(size), let base = buffer.baseAddress?.assumingMemoryBound(to: CChar.self) else {
            fuse_reply_err(req, ENOMEM); return
        }
        var used = 0
        var counted: [NodeID] = []
        var index = Int(offset)
        let entries = handle.entries
        while index < entries.count {
            let entry = entries[index]
            let next = off_t(index + 1)
            var added: Int
            if plus {
                var e = fuse_entry_param()
                if let a = entry.attributes {
                    e = entryParam(a)
                } else {
                    e.attr.st_ino = UInt(index == 0 ? node : Volume.rootNode)
                    e.attr.st_mode = S_IFDIR
                }
                added = entry.name.withCString { fuse_add_direntry_plus(req, base + used, size - used, $0, &e, next) }
                if added <= size - used, let a = entry.attributes {
                    lookups.add(a.node)
                    counted.append(a.node)
                }
            } else {
                var st = Glibc.stat()
                if let a = entry.attributes {
                    st.st_ino = UInt(a.node)
                    st.st_mode = a.mode
                } else {
                    st.st_ino = UInt(index == 0 ? node : Volume.rootNode)
                    st.st_mode = S_IFDIR
                }
                added = entry.name.withCString { fuse_add_direntry(req, base + used, size - used, $0, &st, next) }
            }
            if added > size - used { break }
            used += added
            index += 1
        }
        handle.served = true
        if fuse_reply_buf(req, base, used) != 0 {
            for n in counted { forgetCounted(n, 1) }
        }
    }

    func releasedir(_ req: fuse_req_t?, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        if let fi { DirectoryHandle.release(fi.pointee.fh) }
        fuse_reply_err(req, 0)
    }

    /// Metadata changes are committed before they return: nothing to do.
    func fsyncdir(_ req: fuse_req_t?) { fuse_reply_err(req, 0) }

    // MARK: file system

    func statfs(_ req: fuse_req_t?) {
        do {
            let s = try volume.space()
            let unit: UInt64 = 4096
            var st = statvfs()
            st.f_bsize = UInt(unit)
            st.f_frsize = UInt(unit)
            st.f_blocks = UInt(s.totalBytes / unit)
            st.f_bfree = UInt(s.freeBytes / unit)
            st.f_bavail = UInt(s.availableBytes / unit)
            st.f_files = UInt(s.files)
            st.f_ffree = UInt.max >> 1 - UInt(s.files)
            st.f_favail = st.f_ffree
            st.f_namemax = 255
            fuse_reply_statfs(req, &st)
        } catch { fail(req, error, "statfs") }
    }

    // MARK: extended attributes (read-only, informational)

    func getxattr(_ req: fuse_req_t?, _ node: fuse_ino_t, _ rawName: UnsafePointer<CChar>?, _ size: Int) {
        guard let name = name(rawName) else { fuse_reply_err(req, ENODATA); return }
        do {
            guard let value = try volume.extendedAttribute(node, name: name) else { fuse_reply_err(req, ENODATA); return }
            replyXattr(req, value, size)
        } catch { fail(req, error, "getxattr") }
    }

    func listxattr(_ req: fuse_req_t?, _ node: fuse_ino_t, _ size: Int) {
        do {
            var bytes: [UInt8] = []
            for n in try volume.extendedAttributeNames(node) { bytes += Array(n.utf8) + [0] }
            replyXattr(req, bytes, size)
        } catch { fail(req, error, "listxattr") }
    }

    /// size 0 asks for the length; a smaller buffer than the value is ERANGE.
    private func replyXattr(_ req: fuse_req_t?, _ value: [UInt8], _ size: Int) {
        if size == 0 {
            fuse_reply_xattr(req, value.count)
        } else if size < value.count {
            fuse_reply_err(req, ERANGE)
        } else {
            _ = value.withUnsafeBytes { fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
        }
    }

    /// Extended attributes cannot be set or removed: EROFS on read-only nodes, else ENOTSUP.
    func changeXattr(_ req: fuse_req_t?, _ node: fuse_ino_t) {
        do {
            fuse_reply_err(req, try volume.attributes(node).readOnly ? EROFS : ENOTSUP)
        } catch { fail(req, error, "setxattr") }
    }
}
