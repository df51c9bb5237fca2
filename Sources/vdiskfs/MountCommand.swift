import ArgumentParser
import Foundation
import VDiskFUSE
import VDiskStore

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount", abstract: "Show the store's images as read/write files under a directory.",
        discussion: """
            Mounts the store with FUSE: every image is a file, every image directory a directory. \
            Writes are journaled on local disk and moved into the store in the background; \
            fsync makes them durable. Without -f the command returns once the mount is ready \
            (exit 0) and the daemon logs to --log. Unmount with 'fusermount3 -u MOUNTPOINT' \
            (or umount), or send the daemon SIGTERM/SIGINT: it flushes every dirty block into \
            the store, commits and exits. If it is killed, unmount with 'fusermount3 -u'; the \
            next mount replays the journal. A store can be mounted once at a time (exit 13).
            """)

    @OptionGroup var store: StoreOptions
    @Argument(help: "An existing directory to mount on.") var mountpoint: String
    @Flag(name: [.short, .long], help: "Stay in the foreground (log to standard error).") var foreground = false
    @Option(name: .short, help: ArgumentHelp("Mount options, comma separated: allow_other, ro, ... (repeatable).", valueName: "OPTIONS"))
    var o: [String] = []
    @Option(name: .customLong("cache-size"), help: ArgumentHelp("Memory for caches: decompressed blocks, tree nodes (1/8), the journal's block map and the buffers of requests in flight (default 256M).", valueName: "SIZE"))
    var cacheSize: String?
    @Option(name: .customLong("disk-cache"), help: ArgumentHelp("A local directory caching what is read from the store (for rados:// stores; survives restarts, verified on every read).", valueName: "DIR"))
    var diskCache: String?
    @Option(name: .customLong("disk-cache-size"), help: ArgumentHelp("Size of the disk cache (default 4G).", valueName: "SIZE"))
    var diskCacheSize: String?
    @Option(help: ArgumentHelp("Write-back journal directory (default STORE/journal); keep it on local disk.", valueName: "DIR"))
    var journal: String?
    @Option(name: .customLong("journal-size"), help: ArgumentHelp("Writes the journal holds before writers wait for the flusher (default 768M, at least 16M); each 4 KiB block in it takes about 48 bytes of memory.", valueName: "SIZE"))
    var journalSize: String?
    @Option(help: ArgumentHelp("The daemon's log file (default STORE/mount.log).", valueName: "FILE"))
    var log: String?
    @Option(help: ArgumentHelp("Kernel read-ahead of the mount (0 keeps the kernel's 128K).", valueName: "SIZE"))
    var readahead: String = "1M"
    @Flag(help: "List .snapshots in the top directory (it is always reachable by name).") var showSnapshots = false
    @Option(help: ArgumentHelp("Take a snapshot this often: 30s, 15m, 1h, 1d.", valueName: "DURATION")) var snapshotEvery: String?
    @Option(help: "Automatic snapshots to keep: the newest N.") var keepLast = 0
    @Option(help: "Automatic snapshots to keep: the newest in each of the last N hours.") var keepHourly = 0
    @Option(help: "Automatic snapshots to keep: the newest in each of the last N days.") var keepDaily = 0
    @Option(help: "Automatic snapshots to keep: the newest in each of the last N weeks.") var keepWeekly = 0
    @Flag(help: "Log every FUSE request (with -f).") var debug = false
    @Option(name: .customLong("ready-fd"), help: .hidden) var readyFD: Int32?

    func run() throws {
        let (storePath, localDirectory) = try resolveStore()
        let target = try resolveMountpoint()
        var volumeOptions = VolumeOptions()
        if let cacheSize { volumeOptions.cacheBytes = Int(try size(cacheSize, "--cache-size")) }
        if let diskCacheSize {
            guard diskCache != nil else { throw StoreError.invalidArgument("--disk-cache-size needs --disk-cache DIR") }
            volumeOptions.diskCacheBytes = try size(diskCacheSize, "--disk-cache-size")
        }
        if let diskCache { volumeOptions.diskCacheDirectory = absolute(diskCache) }
        if let journal { volumeOptions.journalDirectory = absolute(journal) }
        if let journalSize {
            let bytes = try size(journalSize, "--journal-size")
            guard bytes >= 16 << 20 else { throw StoreError.invalidArgument("--journal-size: \(journalSize) is less than 16M") }
            volumeOptions.journalLimit = bytes
            volumeOptions.flushThreshold = min(volumeOptions.flushThreshold, bytes / 4)
        }
        volumeOptions.showSnapshotDirectory = showSnapshots
        if let snapshotEvery {
            guard let seconds = parseDuration(snapshotEvery), seconds >= 1 else {
                throw StoreError.invalidArgument("--snapshot-every takes a duration such as 30s, 15m, 1h or 1d (got \(snapshotEvery))")
            }
            volumeOptions.snapshotInterval = seconds
        }
        guard [keepLast, keepHourly, keepDaily, keepWeekly].allSatisfy({ $0 >= 0 }) else {
            throw StoreError.invalidArgument("--keep-* counts cannot be negative")
        }
        volumeOptions.retention = RetentionPolicy(last: keepLast, hourly: keepHourly, daily: keepDaily, weekly: keepWeekly)
        let readAheadBytes = try size(readahead, "--readahead")
        let logPath = absolute(log ?? localDirectory + "/mount.log")

        if !foreground {
            // The daemon: this program again, in the foreground, reporting through a pipe.
            var args = ["mount", "-s", storePath, target, "-f", "--log", logPath, "--readahead", readahead]
            for opt in o { args += ["-o", opt] }
            if let cacheSize { args += ["--cache-size", cacheSize] }
            if let diskCache { args += ["--disk-cache", absolute(diskCache)] }
            if let diskCacheSize { args += ["--disk-cache-size", diskCacheSize] }
            if let journal = volumeOptions.journalDirectory { args += ["--journal", journal] }
            if let journalSize { args += ["--journal-size", journalSize] }
            if debug { args.append("--debug") }
            if showSnapshots { args.append("--show-snapshots") }
            if let snapshotEvery { args += ["--snapshot-every", snapshotEvery] }
            for (flag, n) in [("--keep-last", keepLast), ("--keep-hourly", keepHourly), ("--keep-daily", keepDaily), ("--keep-weekly", keepWeekly)] where n > 0 {
                args += [flag, String(n)]
            }
            do {
                try MountDaemon.launch(arguments: args, logPath: logPath)
            } catch let failure as MountDaemon.Failure {
                FileHandle.standardError.write(Data("vdiskfs: \(failure.message)\n".utf8))
                throw ExitCode(failure.exitCode)
            }
            return
        }

        var ready: ReadinessPipe?
        if let readyFD {
            setsid()  // the daemon leaves the caller's session and terminal
            ready = ReadinessPipe(fd: readyFD)
        }
        var server = FuseServer.Configuration(mountpoint: target, fsname: storePath)
        server.options = o
        server.readAhead = Int(readAheadBytes)
        server.debug = debug
        let session = MountSession(storePath: storePath, volumeOptions: volumeOptions, server: server)
        let status: Int32
        do {
            status = try session.run(ready: ready)
        } catch {
            let e = error as? StoreError ?? .io(errno: EIO, context: String(describing: error))
            guard ready != nil else { throw e }
            // The daemon: one timestamped line in the log (the parent shows it to the user).
            VDiskStore.log("\(ISO8601DateFormatter().string(from: Date())) vdiskfs: \(e.description)")
            throw ExitCode(e.exitCode)
        }
        if status != 0 { throw ExitCode(status) }
    }

    /// The store as an absolute path (or its rados:// location) and this host's directory
    /// for it; it must exist and hold a store.
    private func resolveStore() throws -> (location: String, localDirectory: String) {
        let path = try store.path
        if path.contains("://") {
            let backend = try StoreBackends.backend(for: path)
            _ = try backend.readConfig()
            try? FileManager.default.createDirectory(atPath: backend.localDirectory, withIntermediateDirectories: true)
            return (path, backend.localDirectory)
        }
        guard let real = realPath(path) else { throw StoreError.storeMissing(path: path) }
        guard FileManager.default.fileExists(atPath: real + "/" + Store.configName) else { throw StoreError.notAStore(path: path) }
        return (real, real)
    }

    /// The mountpoint resolved before anything else (the daemon runs elsewhere); it must be a directory.
    private func resolveMountpoint() throws -> String {
        guard let real = realPath(mountpoint) else {
            throw StoreError.invalidArgument("mountpoint \(mountpoint) does not exist")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: real, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw StoreError.invalidArgument("mountpoint \(mountpoint) is not a directory")
        }
        return real
    }

    private func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    private func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    private func size(_ text: String, _ option: String) throws -> Int64 {
        guard let v = parseSize(text) else { throw StoreError.invalidArgument("\(option): '\(text)' is not a size (like 512M or 2G)") }
        return v
    }
}
