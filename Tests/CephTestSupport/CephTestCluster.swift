import Foundation

/// The throw-away Ceph cluster of this test process: started on first use with
/// `scripts/ceph-test-cluster.sh start <fresh temporary directory>` (1 mon, 1 memstore OSD,
/// pool "vdiskfs"; about a second), stopped when the process exits. Should the process die
/// without exiting (a crash), the script's watchdog stops the cluster anyway (OWNER_PID).
///
/// Ceph missing is a test failure, not a skip: every test using the cluster throws
/// ``StartFailure`` with the script's one-line reason.
///
/// The one copy for every test target that needs a cluster (MountTests, RadosTests):
/// a support target of its own, Foundation only.
public enum CephTestCluster {
    /// The pool the script creates (8 PGs, size 1).
    public static let pool = "vdiskfs"

    /// The cluster's ceph.conf, for RadosCluster(configFile:) or `CEPH_CONF`. Starts the
    /// cluster on first use; throws why it could not be started.
    public static func configFile() throws -> String {
        try started.get()
    }

    /// The error of a cluster that could not be started.
    public struct StartFailure: Error, CustomStringConvertible {
        public var description: String
    }

    /// The repository's root: three levels above this file (Tests/<target>/<file>).
    public static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    private static let script = repositoryRoot.appendingPathComponent("scripts/ceph-test-cluster.sh").path

    /// Where the cluster lives while it runs.
    private static let directory: String = {
        let name = "vdiskfs-ceph-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        return (NSTemporaryDirectory() as NSString).appendingPathComponent(name)
    }()

    /// Started exactly once (a static let is initialized once, thread-safely).
    private static let started: Result<String, StartFailure> = {
        guard FileManager.default.isExecutableFile(atPath: "/bin/bash"),
              FileManager.default.fileExists(atPath: script) else {
            return .failure(StartFailure(description: "Ceph test cluster: \(script) not found"))
        }
        let clock = ContinuousClock()
        let begin = clock.now
        let result = runScript(["start", directory], environment: ["OWNER_PID": "\(getpid())"])
        guard result.status == 0 else {
            let reason = result.stderr.split(separator: "\n").last.map(String.init) ?? "exit status \(result.status)"
            return .failure(StartFailure(description: "Ceph test cluster could not be started: \(reason)"))
        }
        atexit { CephTestCluster.stop() }
        let conf = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        print("Ceph test cluster up in \(clock.now - begin): \(conf)")
        return .success(conf)
    }()

    /// Stops the cluster (at process exit).
    private static func stop() {
        let result = runScript(["stop", directory], environment: [:])
        if result.status != 0 {
            FileHandle.standardError.write(Data("Ceph test cluster: stop failed: \(result.stderr)\n".utf8))
        }
    }

    /// Runs the script with `arguments` and waits for it; returns its exit status and output.
    ///
    /// Spawned directly rather than with Foundation's Process: the daemons the script starts
    /// must inherit no descriptor of this process (Process leaves one open, so that its child
    /// never seems to end), hence every descriptor above 2 is made close-on-exec first.
    private static func runScript(_ arguments: [String], environment extra: [String: String])
        -> (status: Int32, stdout: String, stderr: String)
    {
        let outFile = directory + ".out", errFile = directory + ".err"
        defer { unlink(outFile); unlink(errFile) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            guard let fd = Int32(name), fd > 2 else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
        let environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        let argv = (["/bin/bash", script] + arguments).map { strdup($0) } + [nil]
        defer { (envp + argv).forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/bin/bash", &actions, nil, argv, envp)
        guard rc == 0 else { return (127, "", "cannot run /bin/bash: \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let read = { (path: String) in (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        return (code, read(outFile), read(errFile))
    }
}
