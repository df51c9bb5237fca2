import Foundation
import Glibc
import VDiskStore

/// Starts the mount daemon and waits until its mount is ready: the parent half of
/// `vdiskfs mount` without `-f`.
///
/// The daemon is this same executable run again (so no thread of the parent is forked) with
/// `-f --ready-fd 3` added, in a new session, with standard input and output on /dev/null and
/// standard error appended to the log file. It reports through the pipe on fd 3: one byte `R`
/// once the mount answers, or `E<exit code> <message>` when it cannot mount. The parent
/// returns on `R`, and throws ``Failure`` with the daemon's exit code and message otherwise.
public enum MountDaemon {
    /// The file descriptor number the daemon gets the readiness pipe on.
    public static let readyDescriptor: Int32 = 3

    /// The daemon could not mount: its one-line message and the exit code it would have had.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var exitCode: Int32
        public var message: String
        public var description: String { message }
    }

    /// Runs `executable` with `arguments` (`--ready-fd 3` is appended) as the daemon and waits
    /// for its report. The log file is created if missing and appended to.
    public static func launch(executable: String = "/proc/self/exe", arguments: [String], logPath: String) throws {
        let logFD = Glibc.open(logPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard logFD >= 0 else {
            throw StoreError.outputUnwritable(path: logPath, reason: String(cString: strerror(errno)))
        }
        defer { close(logFD) }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw StoreError.io(errno: errno, context: "pipe") }
        // Close-on-exec, and above 3 so that the dup2 onto fd 3 in the daemon always copies.
        let readEnd = fcntl(pipeFDs[0], F_DUPFD_CLOEXEC, 10)
        let writeEnd = fcntl(pipeFDs[1], F_DUPFD_CLOEXEC, 10)
        close(pipeFDs[0])
        close(pipeFDs[1])
        guard readEnd >= 0, writeEnd >= 0 else { throw StoreError.io(errno: errno, context: "pipe") }
        defer { close(readEnd) }

        markAllCloseOnExec()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, logFD, 2)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, readyDescriptor)

        // The daemon starts with SIGINT, SIGTERM and SIGHUP at their defaults (a caller running
        // `vdiskfs mount ... &` from a script has SIGINT ignored, and libfuse only takes over
        // signals left at their default) and with no signal blocked.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t(), empty = sigset_t()
        sigemptyset(&defaults)
        sigemptyset(&empty)
        for sig in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = (["vdiskfs"] + arguments + ["--ready-fd", String(readyDescriptor)]).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        close(writeEnd)
        guard rc == 0 else { throw StoreError.io(errno: rc, context: "starting the mount daemon") }

        // Read the report until the daemon closes its end (it does once it has reported).
        var report: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(readEnd, $0.baseAddress, $0.count) }
            if n > 0 {
                report += chunk[0..<n]
                if report.first == UInt8(ascii: "R") { return }
                continue
            }
            if n < 0 && errno == EINTR { continue }
            break
        }
        if report.first == UInt8(ascii: "E") {
            let text = String(decoding: report.dropFirst(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            let code = text.prefix { $0.isNumber }
            let message = text.dropFirst(code.count).trimmingCharacters(in: .whitespaces)
            throw Failure(exitCode: Int32(code) ?? 1, message: message.isEmpty ? "the mount failed (see \(logPath))" : message)
        }
        // The daemon died without a word.
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let how = status & 0x7f == 0 ? "exited with status \((status >> 8) & 0xff)" : "was killed by signal \(status & 0x7f)"
        throw Failure(exitCode: 1, message: "the mount daemon \(how) before the mount was ready (see \(logPath))")
    }
}

extension MountDaemon {
    /// Marks every descriptor above 2 close-on-exec, so the daemon inherits none of this
    /// process's (a caller's pipe or socket held open by the daemon would make the caller
    /// wait for the daemon instead of for this command). The parent exits right after.
    static func markAllCloseOnExec() {
        let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.compactMap { Int32($0) }
        for fd in open ?? Array(3..<1024) where fd > 2 {
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }
}

/// The daemon's end of the readiness pipe: reports once, then closes it so that the waiting
/// parent returns.
public final class ReadinessPipe: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()
    private var done = false

    /// The pipe on `fd` (as given by `--ready-fd`). Marks it close-on-exec.
    public init(fd: Int32) {
        self.fd = fd
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    /// The mount is ready.
    public func succeed() { send("R") }

    /// The mount failed: `message` is shown by the parent, which exits with `exitCode`.
    public func fail(exitCode: Int32, message: String) {
        send("E\(exitCode) \(message.replacingOccurrences(of: "\n", with: " "))\n")
    }

    /// Reports `error` as a failure (StoreError keeps its exit code; anything else is 1).
    public func fail(_ error: any Error) {
        if let e = error as? StoreError {
            fail(exitCode: e.exitCode, message: e.description)
        } else if let e = error as? MountDaemon.Failure {
            fail(exitCode: e.exitCode, message: e.message)
        } else {
            fail(exitCode: 1, message: String(describing: error))
        }
    }

    private func send(_ text: String) {
        lock.lock()
        defer { lock.unlock() }
        guard !done else { return }
        done = true
        var bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + sent, $0.count - sent) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }  // the parent is gone (SIGPIPE is ignored once the session runs)
            sent += n
        }
        close(fd)
    }
}
