import CephTestSupport
import Foundation
import XCTest

/// The result of a finished program.
struct ProgramResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `program` with `arguments`, standard input on /dev/null, and captures its output.
///
/// Spawned directly (not with Foundation's Process, whose child keeps a socket that daemons
/// started by the child would inherit, so that the child never seems to end): every other
/// descriptor of this process is made close-on-exec first, so the child gets only 0, 1 and 2.
@discardableResult
func runProgram(_ program: String, _ arguments: [String]) throws -> ProgramResult {
    var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
    guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else { throw POSIXError(.EMFILE) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
    closeOnExecAbove2()
    var environment = ProcessInfo.processInfo.environment
    environment["VDISKFS_STORE"] = nil
    let env = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    let argv = ([program] + arguments).map { strdup($0) } + [nil]
    defer { (env + argv).forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawnp(&pid, program, &actions, nil, argv, env)
    close(outPipe[1])
    close(errPipe[1])
    defer { close(outPipe[0]); close(errPipe[0]) }
    guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .ENOENT) }
    // Both pipes are drained at once, so a chatty child never blocks.
    let errData = ReadBox()
    let done = DispatchSemaphore(value: 0)
    let errFD = errPipe[0]
    Thread { errData.data = readAll(errFD); done.signal() }.start()
    let outData = readAll(outPipe[0])
    done.wait()
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return ProgramResult(status: code, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData.data, as: UTF8.self))
}

private final class ReadBox: @unchecked Sendable { var data = Data() }

private func closeOnExecAbove2() {
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
        guard let fd = Int32(name), fd > 2 else { continue }
        let flags = fcntl(fd, F_GETFD)
        if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
    }
}

private func readAll(_ fd: Int32) -> Data {
    var data = Data()
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n > 0 { data.append(contentsOf: chunk[0..<n]); continue }
        if n < 0 && errno == EINTR { continue }
        return data
    }
}

/// Runs a shell command and fails the test when it fails; returns its standard output.
@discardableResult
func sh(_ command: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
    let r = try runProgram("/bin/sh", ["-c", command])
    XCTAssertEqual(r.status, 0, "\(command)\n\(r.stderr)", file: file, line: line)
    return r.stdout
}

/// The `vdiskfs` binary under test: $VDISKFS_BIN; else the one next to the test bundle (the
/// products directory of whatever scratch path built the tests); else .build/debug/vdiskfs.
enum VDiskfsBinary {
    static let path: String = {
        if let p = ProcessInfo.processInfo.environment["VDISKFS_BIN"], !p.isEmpty { return p }
        var candidates = [Bundle.main.bundleURL.appendingPathComponent("vdiskfs").path,
                          URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vdiskfs").path]
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            candidates.append(bundle.bundleURL.deletingLastPathComponent().appendingPathComponent("vdiskfs").path)
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/debug/vdiskfs").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
    }()
}

/// Runs the vdiskfs command.
@discardableResult
func vdiskfs(_ arguments: String...) throws -> ProgramResult { try runProgram(VDiskfsBinary.path, arguments) }

/// The mount lines of this mount namespace whose mountpoint is `path`.
func mountLines(at path: String) -> [String] {
    let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").map(String.init).filter { line in
        let fields = line.split(separator: " ")
        return fields.count > 4 && fields[4] == path
    }
}

/// Where a MountFixture's store lives.
enum MountBackend {
    /// A store directory in the fixture's temporary directory (the default).
    case local
    /// A store in the test process's throw-away Ceph cluster (CephTestCluster), in a
    /// namespace of its own: `rados://vdiskfs/NAMESPACE?conf=…&lease=SECONDS`, with this
    /// "host"'s state (index, journal, mount.log) under a --state-dir in the fixture's directory.
    case rados(lease: Int = 3)
}

/// A store and a mountpoint in a fresh temporary directory, mounted with the real binary.
///
/// `mount()` runs `vdiskfs mount` without `-f`: its exit is the readiness signal. `unmount()`
/// runs `fusermount3 -u` (falling back to `umount -l`) and waits for the daemon to finish its
/// final flush and exit (the store is locked until then). The test case's teardown unmounts
/// whatever is still mounted and fails the test if a mount or a daemon leaked.
///
/// On a RADOS store (`backend: .rados()`) every command gets `--state-dir`; `cli(…)` runs a
/// verb with the store's arguments on either backend. `MountFixture(test, sharing: other)`
/// is a second "host" of `other`'s RADOS store: its own state directory and mountpoint.
final class MountFixture {
    let directory: String
    /// The store: its directory, or its rados:// location (with options).
    let store: String
    let mountpoint: String
    /// This host's --state-dir (RADOS stores only).
    let stateDirectory: String?
    /// Where the mount keeps its journal and mount.log: the store directory, or
    /// STATE/rados/POOL/NAMESPACE.
    let hostDirectory: String
    private unowned let test: XCTestCase

    /// `-s STORE` (and `--state-dir DIR`): what every command on this store takes.
    var storeArguments: [String] { ["-s", store] + (stateDirectory.map { ["--state-dir", $0] } ?? []) }

    var isRados: Bool { stateDirectory != nil }

    init(_ test: XCTestCase, backend: MountBackend = .local, file: StaticString = #filePath, line: UInt = #line) throws {
        self.test = test
        directory = Self.freshDirectory()
        mountpoint = directory + "/mnt"
        switch backend {
        case .local:
            store = directory + "/store"
            stateDirectory = nil
            hostDirectory = store
        case .rados(let lease):
            let namespace = "mt-" + UUID().uuidString.prefix(8).lowercased()
            store = "rados://\(CephTestCluster.pool)/\(namespace)?conf=\(try CephTestCluster.configFile())&lease=\(lease)"
            stateDirectory = directory + "/state"
            hostDirectory = Self.hostDirectory(store: store, stateDirectory: directory + "/state")
        }
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let r = try runProgram(VDiskfsBinary.path, ["init"] + storeArguments)
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        test.addTeardownBlock { [self] in self.tearDown() }
    }

    /// A second host of `other`'s RADOS store: a state directory and a mountpoint of its own
    /// (in a fresh temporary directory); the store is not created again.
    init(_ test: XCTestCase, sharing other: MountFixture) throws {
        precondition(other.isRados, "only a RADOS store is shared between hosts")
        self.test = test
        directory = Self.freshDirectory()
        mountpoint = directory + "/mnt"
        store = other.store
        stateDirectory = directory + "/state"
        hostDirectory = Self.hostDirectory(store: store, stateDirectory: directory + "/state")
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        test.addTeardownBlock { [self] in self.tearDown() }
    }

    private static func freshDirectory() -> String { "/tmp/vdiskfs-mt-" + UUID().uuidString.prefix(8).lowercased() }

    /// STATE/rados/POOL/NAMESPACE, as the command derives it from the location.
    private static func hostDirectory(store: String, stateDirectory: String) -> String {
        stateDirectory + "/rados/" + String(store.dropFirst("rados://".count).prefix { $0 != "?" })
    }

    /// Runs `vdiskfs ARGUMENTS -s STORE [--state-dir DIR]` (options may follow the arguments).
    @discardableResult
    func cli(_ arguments: String...) throws -> ProgramResult {
        try runProgram(VDiskfsBinary.path, arguments + storeArguments)
    }

    /// Path of `name` inside the mount.
    func path(_ name: String) -> String { mountpoint + "/" + name }

    var isMounted: Bool { !mountLines(at: mountpoint).isEmpty }

    /// Mounts; the test fails (and this throws) if the command does not exit 0.
    func mount(_ extra: String..., file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try runProgram(VDiskfsBinary.path, ["mount"] + storeArguments + [mountpoint] + extra)
        XCTAssertEqual(r.status, 0, "mount failed: \(r.stderr)\nlog:\n\(log)", file: file, line: line)
        guard r.status == 0 else { throw NSError(domain: "MountTests", code: Int(r.status), userInfo: [NSLocalizedDescriptionKey: r.stderr]) }
        XCTAssertTrue(isMounted, "vdiskfs mount returned 0 but \(mountpoint) is not mounted", file: file, line: line)
        XCTAssertTrue(r.stderr.isEmpty, "unexpected output: \(r.stderr)", file: file, line: line)
    }

    /// Unmounts and waits for the daemon to exit.
    func unmount(file: StaticString = #filePath, line: UInt = #line) throws {
        let daemon = daemonPID()
        if isMounted {
            let r = try runProgram("/usr/bin/env", ["fusermount3", "-u", mountpoint])
            if r.status != 0 {
                _ = try runProgram("/usr/bin/env", ["umount", "-l", mountpoint])
            }
        }
        XCTAssertFalse(isMounted, "\(mountpoint) is still mounted", file: file, line: line)
        if let daemon { XCTAssertTrue(waitForExit(daemon), "daemon \(daemon) did not exit\nlog:\n\(log)", file: file, line: line) }
    }

    /// Unmounts and mounts again (a fresh daemon, the same store).
    func remount(file: StaticString = #filePath, line: UInt = #line) throws {
        try unmount(file: file, line: line)
        try mount(file: file, line: line)
    }

    /// The pid of the mount daemon serving this mountpoint, if one runs.
    func daemonPID() -> pid_t? {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
        for entry in entries {
            guard let pid = pid_t(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if args.contains("--ready-fd") && args.contains(mountpoint) && args.contains("mount") { return pid }
        }
        return nil
    }

    /// Waits until `pid` has exited (it is not our child: it was started by `vdiskfs mount`).
    func waitForExit(_ pid: pid_t, timeout: TimeInterval = 60) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if kill(pid, 0) != 0 && errno == ESRCH { return true }
            // A zombie whose parent has not reaped it yet counts as gone.
            if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), stat.contains(") Z ") { return true }
            usleep(20_000)
        }
        return false
    }

    /// The daemon's log.
    var log: String { (try? String(contentsOfFile: hostDirectory + "/mount.log", encoding: .utf8)) ?? "" }

    /// Waits until `pid` is gone altogether: not even a zombie (a zombie still holds its pid, so
    /// another process cannot yet tell that it died).
    func waitUntilReaped(_ pid: pid_t, timeout: TimeInterval = 30) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if kill(pid, 0) != 0 && errno == ESRCH { return true }
            usleep(20_000)
        }
        return false
    }

    private func tearDown() {
        // A daemon a test stopped (kill -STOP) and did not resume could not unmount.
        if let pid = daemonPID() { kill(pid, SIGCONT) }
        let leaked = isMounted
        if leaked { try? unmount() }
        if isMounted {
            _ = try? runProgram("/usr/bin/env", ["umount", "-l", mountpoint])
            XCTFail("mount on \(mountpoint) leaked and could not be unmounted")
        }
        if let pid = daemonPID() {
            if !waitForExit(pid, timeout: 30) {
                kill(pid, SIGKILL)
                XCTFail("daemon \(pid) leaked")
            }
        }
        XCTAssertFalse(log.contains("more often than it was looked up"), "lookup counts went wrong:\n\(log)")
        XCTAssertFalse(log.contains("Fatal error"), "the daemon crashed:\n\(log)")
        try? FileManager.default.removeItem(atPath: directory)
    }
}
