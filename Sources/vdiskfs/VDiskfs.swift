import ArgumentParser
import Foundation
import VDiskStore

/// The `vdiskfs` command. Errors from the store are printed as one line and mapped to the
/// exit codes documented in vdiskfs(1); argument errors exit 64 (EX_USAGE).
@main
struct VDiskfs: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "vdiskfs",
        abstract: "Deduplicated, content-addressed storage for VM disk images.",
        discussion: """
            A store keeps disk images as fixed-size blocks, each stored once by its SHA-256, \
            LZ4-compressed in pack files. Every command takes the store with -s/--store or \
            from the VDISKFS_STORE environment variable.

            Exit codes: 0 ok, 1 I/O error, 10 store missing, 11 not a store, 12 store damaged, \
            13 store locked, 14 name exists, 15 no such image, 16 input unreadable, 17 disk full, \
            18 damaged data, 19 invalid name or argument, 20 read-only, 21 output unwritable, \
            22 busy, 64 usage.
            """,
        version: version,
        subcommands: [InitCommand.self, ImportCommand.self, ExportCommand.self, ListCommand.self, CloneCommand.self,
                      RemoveCommand.self, StatsCommand.self, VerifyCommand.self, MountCommand.self, SnapshotCommand.self, SnapshotsCommand.self,
                      LogCommand.self, RollbackCommand.self, GCCommand.self, TrimCommand.self, UnmountCommand.self,
                      AnalyzeCommand.self])

    static func main() {
        do {
            var command = try parseAsRoot()
            // One-shot verbs report a failure once, as their exit message; a mount keeps a log.
            if String(describing: type(of: command)) != "MountCommand" { logHandler = nil }
            try command.run()
        } catch let error as StoreError {
            FileHandle.standardError.write(Data("vdiskfs: \(error.description)\n".utf8))
            Foundation.exit(error.exitCode)
        } catch let error as ExitCode {
            Foundation.exit(error.rawValue)
        } catch {
            exit(withError: error)
        }
    }
}

/// `-s/--store`, or the VDISKFS_STORE environment variable.
struct StoreOptions: ParsableArguments {
    @Option(name: [.short, .customLong("store")], help: ArgumentHelp("The store directory (default: $VDISKFS_STORE).", valueName: "STORE"))
    var store: String?

    var path: String {
        get throws {
            if let store, !store.isEmpty { return store }
            if let env = ProcessInfo.processInfo.environment["VDISKFS_STORE"], !env.isEmpty { return env }
            throw ValidationError("no store given: use -s STORE or set VDISKFS_STORE")
        }
    }
}
