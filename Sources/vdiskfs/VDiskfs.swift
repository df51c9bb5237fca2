import ArgumentParser
import Foundation
import VDiskRados
import VDiskStore

/// The `vdiskfs` command. Errors from the store are printed as one line and mapped to the
/// exit codes documented in vdiskfs(1); argument errors exit 64 (EX_USAGE).
@main
struct VDiskfs: ParsableCommand {
    static let version = "0.2.3"

    static let configuration = CommandConfiguration(
        commandName: "vdiskfs",
        abstract: "Deduplicated, content-addressed storage for VM disk images.",
        discussion: """
            A store keeps disk images as fixed-size blocks, each stored once by its SHA-256, \
            LZ4-compressed in pack files. Every command takes the store with -s/--store or \
            from the VDISKFS_STORE environment variable: a directory, or a Ceph RADOS pool \
            shared by many hosts, rados://POOL[/NAMESPACE][?conf=CEPH.CONF&id=USER&lease=SECONDS].

            Exit codes: 0 ok, 1 I/O error, 10 store missing, 11 not a store, 12 store damaged, \
            13 store locked, 14 name exists, 15 no such image, 16 input unreadable, 17 disk full, \
            18 damaged data, 19 invalid name or argument, 20 read-only, 21 output unwritable, \
            22 busy, 64 usage.
            """,
        version: version,
        subcommands: [InitCommand.self, ImportCommand.self, ExportCommand.self, ListCommand.self, CloneCommand.self,
                      RemoveCommand.self, StatsCommand.self, VerifyCommand.self, MountCommand.self, SnapshotCommand.self, SnapshotsCommand.self,
                      LogCommand.self, RollbackCommand.self, GCCommand.self, TrimCommand.self, UnmountCommand.self,
                      LeaseCommand.self, AnalyzeCommand.self])

    static func main() {
        RadosBackend.register()
        do {
            var command = try parseAsRoot()
            // One-shot verbs report a failure once, as their exit message; a mount keeps a log.
            if String(describing: type(of: command)) != "MountCommand" { logHandler = nil }
            try command.run()
            // _exit: librados' threads may still be winding down, and its static destructors
            // abort (boost::bad_get) if exit() runs them meanwhile. Every write that matters
            // was synced; standard output is flushed here.
            fflush(nil)
            _exit(0)
        } catch let error as StoreError {
            FileHandle.standardError.write(Data("vdiskfs: \(error.description)\n".utf8))
            // _exit: librados' static destructors can abort while its threads wind down.
            fflush(nil)
            _exit(error.exitCode)
        } catch let error as ExitCode {
            fflush(nil)
            _exit(error.rawValue)
        } catch {
            exit(withError: error)
        }
    }
}

/// `-s/--store`, or the VDISKFS_STORE environment variable; `--state-dir` for shared stores.
struct StoreOptions: ParsableArguments {
    @Option(name: [.short, .customLong("store")], help: ArgumentHelp("The store: a directory or rados://POOL[/NAMESPACE] (default: $VDISKFS_STORE).", valueName: "STORE"))
    var store: String?
    @Option(name: .customLong("state-dir"), help: ArgumentHelp("Where this host keeps its index (and a mount its journal) of rados:// stores (default: $VDISKFS_STATE_DIR, else /var/lib/vdiskfs).", valueName: "DIR"))
    var stateDirectory: String?

    var path: String {
        get throws {
            if let stateDirectory {
                // Through the environment, so that a mount's daemon inherits it.
                let absolute = stateDirectory.hasPrefix("/") ? stateDirectory : FileManager.default.currentDirectoryPath + "/" + stateDirectory
                setenv("VDISKFS_STATE_DIR", absolute, 1)
            }
            if let store, !store.isEmpty { return store }
            if let env = ProcessInfo.processInfo.environment["VDISKFS_STORE"], !env.isEmpty { return env }
            throw ValidationError("no store given: use -s STORE or set VDISKFS_STORE")
        }
    }
}
