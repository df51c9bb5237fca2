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
///     failures                                → {"ok": false, "error": "...", "code": 14}
public final class VolumeControl: @unchecked Sendable {
    public static func socketPath(store: String) -> String { store + "/control.sock" }

    private let volume: Volume
    private let path: String
    private var listener: Int32 = -1
    private var thread: Thread?

    /// Starts serving `volume`'s control socket (replacing a stale one). Returns nil, after
    /// logging, when the socket cannot be made (the mount works without it).
    public static func start(volume: Volume) -> VolumeControl? {
        let c = VolumeControl(volume: volume, path: socketPath(store: volume.store.path))
        do { try c.listen() } catch {
            log("vdiskfs: no control socket (\(error)); snapshot commands need the store unmounted")
            return nil
        }
        return c
    }

    private init(volume: Volume, path: String) { self.volume = volume; self.path = path }

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

    /// Stops serving and removes the socket.
    public func stop() {
        let fd = listener
        listener = -1
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        unlink(path)
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
            handle(conn)
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
            case "gc":
                let plan = try volume.collectGarbage(threshold: request["threshold"] as? Double ?? 0.5,
                                                     dryRun: request["dry_run"] as? Bool ?? false)
                let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(plan))
                reply["plan"] = json
            default: throw StoreError.invalidArgument("unknown control request \(op)")
            }
        } catch let e as StoreError {
            reply = ["ok": false, "error": e.description, "code": Int(e.exitCode)]
        } catch {
            reply = ["ok": false, "error": "\(error)", "code": 1]
        }
        Self.writeLine(conn, reply)
    }

    // MARK: client

    /// Sends a request to the mount of `store`; nil when no mount answers there.
    public static func send(store: String, _ request: [String: Any]) throws -> [String: Any]? {
        let path = socketPath(store: store)
        guard FileIO.kind(path) == S_IFSOCK else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var addr = try address(path)
        let ok = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else { return nil }
        writeLine(fd, request)
        guard let line = readLine(fd), let reply = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw StoreError.io(errno: EIO, context: "the mount did not answer on \(path)")
        }
        if reply["ok"] as? Bool != true {
            let message = reply["error"] as? String ?? "the mount refused the request"
            switch (reply["code"] as? Int) ?? 1 {
            case 14: throw StoreError.nameExists(name: message)
            case 15: throw StoreError.noSuchImage(name: message)
            case 19: throw StoreError.invalidArgument(message)
            default: throw StoreError.io(errno: EIO, context: message)
            }
        }
        return reply
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

    private static func readLine(_ fd: Int32) -> String? {
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
