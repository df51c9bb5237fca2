import ArgumentParser
import Foundation
import VDiskStore

struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Keep the whole namespace as a read-only snapshot, or delete one.",
        discussion: """
            A snapshot keeps every image as it is now, by name (--label, default the UTC time \
            such as 2026-11-23T10:15:00Z). It costs one small record: chunks are shared. \
            --delete NAME removes one; space only it kept returns with garbage collection. \
            On a mounted store the command asks the running mount (dirty data is included); \
            mkdir/rmdir in MOUNTPOINT/.snapshots do the same.
            """)

    @OptionGroup var store: StoreOptions
    @Option(help: "The snapshot's name (default: the UTC time).") var label: String?
    @Option(help: "Delete the snapshot of this name instead.") var delete: String?

    func run() throws {
        if let name = delete, label != nil { _ = name; throw StoreError.invalidArgument("--label and --delete do not go together") }
        let path = try store.path
        let s: Store
        do { s = try Store.open(at: path, access: .readWrite, purpose: "snapshot") } catch StoreError.storeLocked(let p, let holder) {
            // Mounted: ask the running mount, so dirty data is included.
            var request: [String: Any] = delete.map { ["op": "delete-snapshot", "name": $0] } ?? ["op": "snapshot"]
            if let label { request["label"] = label }
            guard let reply = try VolumeControl.send(store: path, request) else { throw StoreError.storeLocked(path: p, holder: holder) }
            if let name = reply["name"] as? String { print(name) }
            return
        }
        if let name = delete {
            guard label == nil else { throw StoreError.invalidArgument("--label and --delete do not go together") }
            try s.deleteSnapshot(name)
        } else {
            print(try s.createSnapshot(label: label).name)
        }
    }
}

struct SnapshotsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshots", abstract: "List the snapshots, oldest first.")

    @OptionGroup var store: StoreOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let s = try Store.open(at: try store.path, access: .readOnly, purpose: "snapshots")
        let list = try s.snapshots()
        if json { try printJSON(list); return }
        for snap in list {
            let images = try s.namespace(ofSnapshot: snap.name).images(under: "").count
            print("\(snap.name)\t\(Snapshot.timestampName(snap.created))\t\(images) images")
        }
    }
}

struct LogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log", abstract: "Show an image's versions across snapshots and the bytes changed between them.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The image's name.") var name: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let s = try Store.open(at: try store.path, access: .readOnly, purpose: "log")
        let versions = try s.history(of: name)
        if json { try printJSON(versions); return }
        for v in versions {
            print("\(v.snapshot ?? "(live)")\t\(Snapshot.timestampName(v.created))\t\(formatBytes(Int64(v.size)))\t\(formatBytes(Int64(v.changedBytes))) changed\t\(v.root.prefix(12))")
        }
    }
}

struct RollbackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback", abstract: "Restore an image's content from a snapshot.",
        discussion: """
            The image takes the snapshot's version (instant: chunks are shared). On a mounted \
            store the running mount does it, and readers of the mount see the restored content; \
            it is refused (exit 22) while the image is open for writing there.
            """)

    @OptionGroup var store: StoreOptions
    @Argument(help: "The image's name.") var name: String
    @Option(help: "The snapshot to restore from.") var to: String

    func run() throws {
        let path = try store.path
        let s: Store
        do { s = try Store.open(at: path, access: .readWrite, purpose: "rollback") } catch StoreError.storeLocked(let p, let holder) {
            // Mounted: the mount restores the image, unless it is open for writing there.
            guard try VolumeControl.send(store: path, ["op": "rollback", "image": name, "snapshot": to]) != nil else {
                throw StoreError.storeLocked(path: p, holder: holder)
            }
            return
        }
        try s.rollback(name, to: to)
    }
}
