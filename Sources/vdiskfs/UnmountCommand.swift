import ArgumentParser
import Foundation
import VDiskStore

struct UnmountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unmount", abstract: "Unmount a vdiskfs mount and wait until its final flush is done.",
        discussion: """
            Runs fusermount3 -u, then waits until the daemon has flushed every dirty block, \
            committed and let go of the store, so the next command can use it at once. \
            (fusermount3 -u alone returns before the flush ends.) When the final flush fails \
            (a full disk, say), the mount is gone but the writes stay in the journal and \
            replay on the next mount: unmount says so and exits with the error's code (17 \
            for a full disk).
            """)

    @Argument(help: "The mountpoint.") var mountpoint: String
    @Option(help: "Seconds to wait for the final flush.") var timeout: Double = 600
    @Option(name: .customLong("state-dir"), help: ArgumentHelp("The mount's --state-dir, for a rados:// store (default: $VDISKFS_STATE_DIR, else /var/lib/vdiskfs).", valueName: "DIR"))
    var stateDirectory: String?

    func run() throws {
        guard let real = realpath(mountpoint, nil) else { throw StoreError.invalidArgument("\(mountpoint) does not exist") }
        let path = String(cString: real)
        free(real)
        guard let store = Self.store(mountedAt: path) else { throw StoreError.invalidArgument("\(path) is not a vdiskfs mount") }
        if let stateDirectory {
            setenv("VDISKFS_STATE_DIR", stateDirectory.hasPrefix("/") ? stateDirectory : FileManager.default.currentDirectoryPath + "/" + stateDirectory, 1)
        }
        // Asked before the unmount, while the control socket is there: the daemon answers
        // with the final flush's outcome when it has ended.
        let waiter = VolumeControl.awaitExit(store: store)
        if waiter == nil && store.contains("://") {
            // A shared store's lock is not a file here to watch: without the socket there is
            // no way to wait, so nothing is done.
            throw StoreError.invalidArgument("no control socket for the mount of \(store) at \(VolumeControl.socketPath(store: store)) (give the mount's --state-dir; fusermount3 -u unmounts without waiting)")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["fusermount3", "-u", path]
        let err = Pipe()
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            let why = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw StoreError.busy(name: "\(path) (\(why.isEmpty ? "fusermount3 -u failed" : why))")
        }
        if let waiter {
            do { try waiter.outcome(timeout: timeout) } catch let e as StoreError {
                if case .busy = e { throw StoreError.busy(name: "\(store): the daemon is still flushing after \(Int(timeout)) s") }
                FileHandle.standardError.write(Data("vdiskfs: \(path) is unmounted, but its final flush failed (\(e.description)); the writes stay in the journal and replay on the next mount\n".utf8))
                throw ExitCode(e.exitCode)
            }
            return
        }
        // No control socket (a daemon that could not make one): the daemon holds the
        // store's lock until its final commit is done.
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let fd = open(store + "/lock", O_RDONLY | O_CLOEXEC)
            if fd >= 0 {
                let free = flock(fd, LOCK_SH | LOCK_NB) == 0
                close(fd)
                if free { return }
            }
            usleep(50_000)
        }
        throw StoreError.busy(name: "\(store): the daemon is still flushing after \(Int(timeout)) s")
    }

    /// The store a vdiskfs mount at `path` serves (its fsname), from /proc/self/mountinfo.
    static func store(mountedAt path: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 4, unescape(String(fields[4])) == path, let dash = fields.firstIndex(of: "-"),
                  fields.count > dash + 2, fields[dash + 1] == "fuse.vdiskfs" else { continue }
            return unescape(String(fields[dash + 2]))
        }
        return nil
    }

    /// mountinfo escapes space, tab, newline and backslash as octal.
    static func unescape(_ s: String) -> String {
        var out = ""
        var chars = Array(s.unicodeScalars)[...]
        while let c = chars.popFirst() {
            if c == "\\", chars.count >= 3, let v = UInt8(String(String.UnicodeScalarView(chars.prefix(3))), radix: 8) {
                out.unicodeScalars.append(Unicode.Scalar(v))
                chars = chars.dropFirst(3)
            } else {
                out.unicodeScalars.append(c)
            }
        }
        return out
    }
}
