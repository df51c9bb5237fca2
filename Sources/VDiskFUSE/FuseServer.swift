import CFuseShim
import Foundation
import Glibc
import Synchronization
import VDiskStore

/// A FUSE session serving a ``Volume`` at a mountpoint: create with the mount options,
/// ``mount()``, ``serve(onReady:)`` until unmounted or signalled, then ``unmount()``.
///
/// The mount always has `default_permissions` (the kernel checks permissions against the
/// attributes), `fsname=STORE` and `subtype=vdiskfs`; POSIX, OFD and flock locks are kept by
/// the kernel (the file system does not implement them), so QEMU's image locking works.
public final class FuseServer: @unchecked Sendable {
    /// How the session is set up.
    public struct Configuration: Sendable {
        /// The absolute, resolved mountpoint.
        public var mountpoint: String
        /// Shown as the mount's source in /proc/mounts (the store path).
        public var fsname: String
        /// Extra `-o` mount options, comma separated (e.g. `allow_other`, `ro`).
        public var options: [String] = []
        /// Seconds the kernel caches attributes and directory entries.
        public var timeout: Double = 1
        /// Read-ahead of the mount's backing device info in bytes (0: kernel default, 128 KiB).
        /// FUSE's INIT can only lower the kernel's default, so it is raised through sysfs once mounted.
        public var readAhead: Int = 1 << 20
        /// Worker threads: at most this many requests are served at once. Each holds a
        /// request buffer and a read-reply buffer of up to 1 MiB each; 4 keep two cores busy
        /// (the kernel queues the rest of a deeper queue: 8 served random reads and writes
        /// no faster, and held 8 MiB more).
        public var maxThreads: UInt32 = 4
        /// Idle worker threads kept for the next burst.
        public var maxIdleThreads: UInt32 = 4

        /// The most memory the worker threads' request and read-reply buffers take (8 MiB
        /// with 4 threads): the volume counts it against its cache budget.
        public var requestBufferBytes: Int { Int(maxThreads) * 2 * (Int(FuseServer.maxRequest) + 4096) }
        /// Log every request (libfuse's `-d`).
        public var debug = false

        public init(mountpoint: String, fsname: String) {
            self.mountpoint = mountpoint
            self.fsname = fsname
        }
    }

    public let configuration: Configuration
    private let driver: FileSystemDriver
    private var session: OpaquePointer?
    private var mounted = false

    /// Largest read and write request: 1 MiB (libfuse's and the kernel's ceiling, 256 pages).
    static let maxRequest: UInt32 = 1 << 20

    public init(volume: Volume, configuration: Configuration) {
        self.configuration = configuration
        driver = FileSystemDriver(volume: volume, timeout: configuration.timeout)
        driver.onInit = { conn in Self.negotiate(conn) }
    }

    deinit { unmount() }

    /// What the file system asks of the kernel in FUSE's INIT.
    private static func negotiate(_ conn: UnsafeMutablePointer<fuse_conn_info>) {
        var c = conn.pointee
        // Concurrent reads of one file, and concurrent lookups/creates in one directory.
        c.want |= c.capable & UInt32(FUSE_CAP_ASYNC_READ | FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_ASYNC_DIO)
        // Write-back caching would acknowledge writes the daemon has not seen (breaking
        // O_DIRECT/fsync semantics); locks are left to the kernel; O_TRUNC comes as setattr;
        // set-user-ID bits are cleared by the driver (FUSE_HANDLE_KILLPRIV_V2, asked for
        // through the shim: libfuse 3.14 cannot), not through libfuse's older HANDLE_KILLPRIV.
        c.want &= ~UInt32(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS
                          | FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_HANDLE_KILLPRIV
                          | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE)
        c.max_write = min(c.max_write, maxRequest)
        c.max_readahead = min(c.max_readahead, maxRequest)
        // Queue depth of asynchronous (O_DIRECT AIO, read-ahead) requests; the default is 12.
        c.max_background = 64
        c.congestion_threshold = 48
        c.time_gran = 1
        conn.pointee = c
    }

    /// Creates the session, installs the SIGINT/SIGTERM/SIGHUP handlers that end it, and mounts.
    /// Throws with libfuse's own message when the options are bad or the mount fails.
    public func mount() throws {
        precondition(session == nil, "mounted twice")
        FuseLog.install()
        var arguments = ["vdiskfs"]
        if configuration.debug { arguments.append("-d") }
        arguments += ["-o", "default_permissions,subtype=vdiskfs,fsname=" + Self.escape(configuration.fsname)]
        for o in configuration.options where !o.isEmpty { arguments += ["-o", o] }

        var ops = LowLevelOperations.make()
        let userdata = Unmanaged.passUnretained(driver).toOpaque()
        let cStrings = arguments.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        var argv = cStrings
        let se: OpaquePointer? = argv.withUnsafeMutableBufferPointer { buf in
            var args = vdisk_fuse_args_init(Int32(buf.count), buf.baseAddress)
            defer { fuse_opt_free_args(&args) }
            return vdisk_fuse_session_new(&args, &ops, userdata)
        }
        guard let se else {
            throw StoreError.invalidArgument("cannot start the file system: \(FuseLog.lastError ?? "bad mount options \(configuration.options.joined(separator: ","))")")
        }
        session = se
        guard fuse_set_signal_handlers(se) == 0 else {
            throw StoreError.io(errno: errno, context: "installing signal handlers")
        }
        guard fuse_session_mount(se, configuration.mountpoint) == 0 else {
            throw StoreError.io(errno: EIO, context: "mounting on \(configuration.mountpoint) failed: \(FuseLog.lastError ?? "see the log")")
        }
        mounted = true
        // One FUSE round trip per write instead of two (see the shim); without it the mount
        // works as before.
        let rc = vdisk_fuse_session_request_killpriv_v2(se)
        if rc != 0 { log("vdiskfs: writes will cost a getxattr each: \(String(cString: strerror(-rc)))") }
    }

    /// Serves requests on a pool of worker threads until the file system is unmounted or a
    /// signal ends the session. `onReady` is called once, from another thread, as soon as the
    /// mount answers a `stat` of its root (or with the error if it does not); on an error the
    /// session is ended. Returns 0, a negative errno, or the signal that ended the session.
    @discardableResult
    public func serve(onReady: @escaping @Sendable (Result<Void, StoreError>) -> Void = { _ in }) -> Int32 {
        guard let se = session, mounted else { return -EINVAL }
        let mountpoint = configuration.mountpoint
        let readAhead = configuration.readAhead
        let probe = Thread {
            var st = Glibc.stat()
            if stat(mountpoint, &st) != 0 || st.st_ino != UInt(Volume.rootNode) {
                let e = errno
                onReady(.failure(.io(errno: e == 0 ? EIO : e, context: "the mount on \(mountpoint) does not answer")))
                kill(getpid(), SIGTERM)
                return
            }
            if readAhead > 0 { Self.setReadAhead(device: st.st_dev, bytes: readAhead) }
            onReady(.success(()))
        }
        probe.start()
        return vdisk_fuse_session_loop_mt(se, 1, configuration.maxIdleThreads, configuration.maxThreads)
    }

    /// Hooks for the control socket's rollback and trim: which images are open for writing,
    /// and dropping the kernel's cached pages and attributes of an image whose content changed
    /// without a write through the mount. Valid until ``unmount()``.
    public var hooks: MountHooks {
        MountHooks(mountpoint: configuration.mountpoint, isOpenForWriting: { [driver] in driver.isOpenForWriting($0) },
                   invalidate: { [self] node in
                       guard let se = session else { return }
                       let rc = fuse_lowlevel_notify_inval_inode(se, node, 0, 0)
                       if rc != 0 && rc != -ENOENT { log("vdiskfs: could not drop the kernel's cache of node \(node): \(String(cString: strerror(-rc)))") }
                   })
    }

    /// Drops the kernel's cached attributes of `node` (not its pages, so it is safe while the
    /// node is being written). Valid until ``unmount()``.
    public func invalidateAttributes(_ node: NodeID) {
        guard let se = session else { return }
        let rc = fuse_lowlevel_notify_inval_inode(se, node, -1, 0)
        if rc != 0 && rc != -ENOENT { log("vdiskfs: could not drop the kernel's attributes of node \(node): \(String(cString: strerror(-rc)))") }
    }

    /// Unmounts (if still mounted) and ends the session. Safe to call more than once.
    public func unmount() {
        guard let se = session else { return }
        if mounted { fuse_session_unmount(se) }
        fuse_remove_signal_handlers(se)
        fuse_session_destroy(se)
        session = nil
        mounted = false
    }

    /// Sets /sys/class/bdi/MAJOR:MINOR/read_ahead_kb of the mount (root only; best effort).
    private static func setReadAhead(device: dev_t, bytes: Int) {
        let dev = UInt64(device)
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
        let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
        let path = "/sys/class/bdi/\(major):\(minor)/read_ahead_kb"
        let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let text = "\(max(bytes / 1024, 4))\n"
        if Glibc.write(fd, text, text.utf8.count) < 0 {
            log("vdiskfs: could not set read-ahead (\(path)): \(String(cString: strerror(errno)))")
        }
    }

    /// fuse_opt treats ',' as a separator and '\' as an escape.
    private static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: ",", with: "\\,")
    }
}

/// libfuse's log messages go to standard error (the daemon's log); the last error is kept so
/// that a failed mount can say why in its one-line message.
enum FuseLog {
    private static let last = Mutex<String?>(nil)

    static var lastError: String? { last.withLock { $0 } }

    static func install() {
        vdisk_fuse_set_log_sink { level, message in
            guard let message else { return }
            let line = String(cString: message).trimmingCharacters(in: .whitespacesAndNewlines)
            if level <= Int32(FUSE_LOG_ERR.rawValue) {
                let clean = line.hasPrefix("fuse: ") ? String(line.dropFirst(6)) : line
                FuseLog.last.withLock { $0 = clean }
            }
            log(line)
        }
    }
}
