import Foundation
import Glibc

/// The mount's control channel: a Unix socket at `STORE/control.sock` where commands that
/// need the store while it is mounted (and locked) ask the running mount instead, so that
/// dirty data is included. One JSON request line, one JSON reply line:
///
///     {"op": "snapshot", "label": "L"}        → {"ok": true, "name": "L"}
///     {"op": "delete-snapshot", "name": "L"}  → {"ok": true}
///     {"op": "flush"}                         → {"ok": true}
///     {"op": "gc", "threshold": 0.5, "dry_run": false} → {"ok": true, "plan": {...}}
///     {"op": "rollback", "image": "a.img", "snapshot": "S"} → {"ok": true}
///     {"op": "trim", "image": "a.img"}         → {"ok": true, "report": {...}}
///     {"op": "await-exit"}                    → {"ok": true}, and when the mount has ended
///                                               (its final flush done) a second line:
///                                               {"ok": true} or the flush's failure
///     failures                                → {"ok": false, "error": "...", "code": 14, "case": "nameExists", "fields": [...]}
///
/// A failure carries the `StoreError` itself (its case and fields), so the command prints the
/// same message and exits with the same code as it would on an unmounted store.
public final class VolumeControl: @unchecked Sendable {
    /// The socket of the mount of `store` on this host: in the host's directory for the store
    /// (the store itself for a directory store; the `--state-dir` one for a shared store).
    public static func socketPath(store: String) -> String {
        guard store.contains("://") else { return store + "/control.sock" }
        let dir = (try? StoreBackends.backend(for: store))?.localDirectory ?? store
        return dir + "/control.sock"
    }

    private let volume: Volume
    private let hooks: MountHooks
    private let path: String
    private var listener: Int32 = -1
    private var thread: Thread?
    /// Held while a request is served: ``stop()`` waits for it, so that no request outlives
    /// the mount it works on.
    private let serving = NSLock()
    /// Connections of `await-exit` requests, told the mount's outcome by ``finish(_:)``.
    private let exitWaiters = Locked<[Int32]>([])

    /// Starts serving `volume`'s control socket (replacing a stale one). Returns nil, after
    /// logging, when the socket cannot be made (the mount works without it). `hooks` tell
    /// rollback and trim which images are open for writing and drop the kernel's cache.
    public static func start(volume: Volume, hooks: MountHooks = .none) -> VolumeControl? {
        let c = VolumeControl(volume: volume, hooks: hooks, path: volume.store.localDirectory + "/control.sock")
        do { try c.listen() } catch {
            log("vdiskfs: no control socket (\(error)); snapshot commands need the store unmounted")
            return nil
        }
        return c
    }

    private init(volume: Volume, hooks: MountHooks, path: String) { self.volume = volume; self.hooks = hooks; self.path = path }

    private func listen() throws {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw StoreError.io(errno: errno, context: "socket") }
        var addr = try Self.address(path)
        let ok = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0, Glibc.listen(fd, 8) == 0 else {
            let e = errno
            close(fd)
            throw StoreError.io(errno: e, context: "bind \(path)")
        }
        chmod(path, 0o600)
        listener = fd
        let t = Thread { [self] in serve() }
        t.name = "vdiskfs-control"
        thread = t
        t.start()
    }

    /// Stops serving, waits for a request being served, and removes the socket.
    public func stop() {
        let fd = listener
        listener = -1
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        unlink(path)
        serving.lock(); serving.unlock()
    }

    /// Tells every `await-exit` client how the mount ended: nil when the final flush
    /// committed everything, else its failure. Call after the volume is closed.
    public func finish(_ failure: StoreError?) {
        let waiters = exitWaiters.withLock { w in defer { w = [] }; return w }
        for fd in waiters {
            Self.writeLine(fd, failure.map(Self.encode) ?? ["ok": true])
            close(fd)
        }
    }

    private func serve() {
        while true {
            let fd = listener
            guard fd >= 0 else { return }
            let conn = accept(fd, nil, nil)
            if conn < 0 {
                if errno == EINTR { continue }
                return
            }
            _ = fcntl(conn, F_SETFD, FD_CLOEXEC)
            serving.lock()
            if listener >= 0 { handle(conn) }
            serving.unlock()
            close(conn)
        }
    }

    private func handle(_ conn: Int32) {
        guard let line = Self.readLine(conn),
              let request = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let op = request["op"] as? String else {
            Self.writeLine(conn, ["ok": false, "error": "malformed request", "code": 19]); return
        }
        var reply: [String: Any] = ["ok": true]
        do {
            switch op {
            case "snapshot": reply["name"] = try volume.takeSnapshot(label: request["label"] as? String).name
            case "delete-snapshot":
                guard let name = request["name"] as? String else { throw StoreError.invalidArgument("delete-snapshot needs a name") }
                try volume.removeDirectory(parent: Volume.snapshotsNode, name: name)
            case "flush": try volume.flush()
            case "await-exit":
                // Kept open (a copy: serve() closes its own) until finish(_:).
                let keep = fcntl(conn, F_DUPFD_CLOEXEC, 0)
                guard keep >= 0 else { throw StoreError.io(errno: errno, context: "await-exit") }
                exitWaiters.withLock { $0.append(keep) }
            case "gc":
                let plan = try volume.collectGarbage(threshold: request["threshold"] as? Double ?? 0.5,
                                                     dryRun: request["dry_run"] as? Bool ?? false)
                let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(plan))
                reply["plan"] = json
            case "rollback":
                guard let image = request["image"] as? String, let snapshot = request["snapshot"] as? String else {
                    throw StoreError.invalidArgument("rollback needs an image and a snapshot")
                }
                try volume.rollback(image, to: snapshot, hooks: hooks)
            case "trim":
                guard let image = request["image"] as? String else { throw StoreError.invalidArgument("trim needs an image") }
                reply["report"] = try JSONSerialization.jsonObject(with: JSONEncoder().encode(volume.trim(image, hooks: hooks)))
            default: throw StoreError.invalidArgument("unknown control request \(op)")
            }
        } catch let e as StoreError {
            reply = Self.encode(e)
        } catch {
            reply = ["ok": false, "error": "\(error)", "code": 1]
        }
        Self.writeLine(conn, reply)
    }

    // MARK: client

    /// A connection waiting for the mount of a store to end (``awaitExit(store:)``).
    public struct ExitWaiter: ~Copyable {
        let fd: Int32
        let path: String
        deinit { close(fd) }

        /// Waits up to `timeout` seconds for the mount to end: returns when its final flush
        /// committed everything; throws that flush's failure, or `busy` when the mount has
        /// not ended in time, or `io` when the daemon died without telling.
        public func outcome(timeout: Double) throws {
            var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1e6))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            errno = 0
            guard let line = VolumeControl.readLine(fd) else {
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    throw StoreError.busy(name: "the mount is still flushing after \(Int(timeout)) s")
                }
                throw StoreError.io(errno: EIO, context: "the mount daemon ended without finishing its final flush; the journal replays on the next mount")
            }
            guard let reply = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw StoreError.io(errno: EIO, context: "the mount did not answer on \(path)")
            }
            if reply["ok"] as? Bool != true { throw VolumeControl.decode(reply) }
        }
    }

    /// Asks the mount of `store` to say when it has ended; nil when no mount answers there
    /// (none runs, or one too old to know the request).
    public static func awaitExit(store: String) -> ExitWaiter? {
        let path = socketPath(store: store)
        guard let fd = connectTo(path) else { return nil }
        writeLine(fd, ["op": "await-exit"])
        guard let line = readLine(fd), let reply = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              reply["ok"] as? Bool == true else { close(fd); return nil }
        return ExitWaiter(fd: fd, path: path)
    }

    /// A connected socket to the control socket at `path`, or nil.
    private static func connectTo(_ path: String) -> Int32? {
        guard FileIO.kind(path) == S_IFSOCK else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        guard var addr = try? address(path) else { close(fd); return nil }
        let ok = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else { close(fd); return nil }
        return fd
    }

    /// Sends a request to the mount of `store`; nil when no mount answers there.
    public static func send(store: String, _ request: [String: Any]) throws -> [String: Any]? {
        let path = socketPath(store: store)
        _ = try address(path)  // a path too long is an error, not "no mount"
        guard let fd = connectTo(path) else { return nil }
        defer { close(fd) }
        writeLine(fd, request)
        guard let line = readLine(fd), let reply = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw StoreError.io(errno: EIO, context: "the mount did not answer on \(path)")
        }
        if reply["ok"] as? Bool != true { throw decode(reply) }
        return reply
    }

    /// A failure reply carrying `e`: its message and exit code, and its case and fields so
    /// that the command can throw the same error (cases not listed go as message and code).
    static func encode(_ e: StoreError) -> [String: Any] {
        var reply: [String: Any] = ["ok": false, "error": e.description, "code": Int(e.exitCode)]
        func carry(_ name: String, _ fields: Any...) { reply["case"] = name; reply["fields"] = fields }
        if case .storeMissing(let p) = e { carry("storeMissing", p) }
        if case .notAStore(let p) = e { carry("notAStore", p) }
        if case .corruptStore(let d) = e { carry("corruptStore", d) }
        if case .storeLocked(let p, let h) = e { carry("storeLocked", p, h) }
        if case .nameExists(let n) = e { carry("nameExists", n) }
        if case .noSuchImage(let n) = e { carry("noSuchImage", n) }
        if case .inputUnreadable(let p, let r) = e { carry("inputUnreadable", p, r) }
        if case .diskFull(let p) = e { carry("diskFull", p) }
        if case .damagedChunk(let d) = e { carry("damagedChunk", d) }
        if case .invalidName(let n, let r) = e { carry("invalidName", n, r) }
        if case .nameTooLong(let n) = e { carry("nameTooLong", n) }
        if case .invalidArgument(let a) = e { carry("invalidArgument", a) }
        if case .readOnly(let n) = e { carry("readOnly", n) }
        if case .outputUnwritable(let p, let r) = e { carry("outputUnwritable", p, r) }
        if case .busy(let n) = e { carry("busy", n) }
        if case .leaseHeld(let i, let h) = e { carry("leaseHeld", i, h) }
        if case .io(let errno, let c) = e { carry("io", Int(errno), c) }
        return reply
    }

    /// The `StoreError` of a failure reply (an I/O error with its message when it names none).
    static func decode(_ reply: [String: Any]) -> StoreError {
        let message = reply["error"] as? String ?? "the mount refused the request"
        let f = reply["fields"] as? [Any] ?? []
        func s(_ i: Int) -> String? { i < f.count ? f[i] as? String : nil }
        switch (reply["case"] as? String, s(0), s(1)) {
        case ("storeMissing", let a?, _): return .storeMissing(path: a)
        case ("notAStore", let a?, _): return .notAStore(path: a)
        case ("corruptStore", let a?, _): return .corruptStore(detail: a)
        case ("storeLocked", let a?, let b?): return .storeLocked(path: a, holder: b)
        case ("nameExists", let a?, _): return .nameExists(name: a)
        case ("noSuchImage", let a?, _): return .noSuchImage(name: a)
        case ("inputUnreadable", let a?, let b?): return .inputUnreadable(path: a, reason: b)
        case ("diskFull", let a?, _): return .diskFull(path: a)
        case ("damagedChunk", let a?, _): return .damagedChunk(detail: a)
        case ("invalidName", let a?, let b?): return .invalidName(name: a, reason: b)
        case ("nameTooLong", let a?, _): return .nameTooLong(name: a)
        case ("invalidArgument", let a?, _): return .invalidArgument(a)
        case ("readOnly", let a?, _): return .readOnly(name: a)
        case ("outputUnwritable", let a?, let b?): return .outputUnwritable(path: a, reason: b)
        case ("busy", let a?, _): return .busy(name: a)
        case ("leaseHeld", let a?, let b?): return .leaseHeld(image: a, holder: b)
        case ("io", _, let c?): return .io(errno: Int32(f.first as? Int ?? Int(EIO)), context: c)
        default: return .io(errno: EIO, context: message)
        }
    }

    private static func address(_ path: String) throws -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw StoreError.invalidArgument("the control socket path \(path) is too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        return addr
    }

    fileprivate static func readLine(_ fd: Int32) -> String? {
        var data = [UInt8]()
        var byte: UInt8 = 0
        while data.count < 65536 {
            let n = read(fd, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            if byte == 10 { return String(decoding: data, as: UTF8.self) }
            data.append(byte)
        }
        return data.isEmpty ? nil : String(decoding: data, as: UTF8.self)
    }

    private static func writeLine(_ fd: Int32, _ object: [String: Any]) {
        guard var data = try? JSONSerialization.data(withJSONObject: object) else { return }
        data.append(10)
        _ = data.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }
}
