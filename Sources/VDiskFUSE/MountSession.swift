import Foundation
import Glibc
import VDiskStore

/// One mount of a store, from opening the store to the last flush: the daemon half of
/// `vdiskfs mount` (and all of it with `-f`).
///
/// Opens the store read-write (a second mount of the same store fails with
/// `StoreError.storeLocked` before anything is mounted), opens the ``Volume`` (which replays
/// a journal left by a crash), mounts, and serves until `umount`/`fusermount3 -u` or
/// SIGINT/SIGTERM/SIGHUP. Then it closes the volume (every dirty block flushed and committed)
/// and unmounts. If closing fails the journal stays on disk and is replayed by the next mount.
public struct MountSession {
    /// The store directory.
    public var storePath: String
    /// The volume's settings (cache size, journal directory, ...).
    public var volumeOptions: VolumeOptions
    /// The FUSE session's settings (mountpoint, `-o` options, ...).
    public var server: FuseServer.Configuration

    public init(storePath: String, volumeOptions: VolumeOptions, server: FuseServer.Configuration) {
        self.storePath = storePath
        self.volumeOptions = volumeOptions
        self.server = server
    }

    /// Mounts and serves; returns the exit status (0, or 1 when the final flush failed).
    /// Throws if the mount could not be set up (not logged: the caller prints it); `ready`
    /// (the daemon's pipe) is told either way.
    public func run(ready: ReadinessPipe?) throws -> Int32 {
        let mountpoint = server.mountpoint
        let volume: Volume
        let fuse: FuseServer
        do {
            let store = try Store.open(at: storePath, access: .readWrite, purpose: "mount on \(mountpoint)")
            var options = volumeOptions
            options.requestBufferBytes = server.requestBufferBytes
            volume = try Volume(store: store, options: options)
            fuse = FuseServer(volume: volume, configuration: server)
            log("\(Self.timestamp()) vdiskfs: mounting \(storePath) on \(mountpoint) (pid \(getpid()))")
            do { try fuse.mount() } catch {
                fuse.unmount()
                try? volume.close()
                throw error
            }
        } catch {
            ready?.fail(error)
            throw error
        }

        var control: VolumeControl?
        var schedule: SnapshotSchedule?
        let status = fuse.serve { result in
            switch result {
            case .success:
                log("\(Self.timestamp()) vdiskfs: mounted \(storePath) on \(mountpoint)")
                control = VolumeControl.start(volume: volume, hooks: fuse.hooks)
                volume.setInvalidation(fuse.hooks.invalidate)
                volume.setAttributeInvalidation { [fuse] node in fuse.invalidateAttributes(node) }
                if let every = volumeOptions.snapshotInterval {
                    schedule = SnapshotSchedule(volume: volume, interval: every, policy: volumeOptions.retention)
                    schedule?.start()
                }
                ready?.succeed()
            case .failure(let error):
                log("\(Self.timestamp()) vdiskfs: \(error.description)")
                ready?.fail(error)
            }
        }
        switch status {
        case 0: log("\(Self.timestamp()) vdiskfs: \(mountpoint) was unmounted; flushing")
        case let s where s > 0: log("\(Self.timestamp()) vdiskfs: signal \(s); flushing and unmounting \(mountpoint)")
        default: log("\(Self.timestamp()) vdiskfs: session ended with error \(String(cString: strerror(-status))); flushing")
        }

        schedule?.stop()
        control?.stop()
        var exitStatus: Int32 = 0
        var failure: StoreError?
        do {
            try volume.close()
        } catch {
            log("\(Self.timestamp()) vdiskfs: final flush failed: \(describe(error)); the journal is kept and replays on the next mount")
            exitStatus = 1
            failure = error as? StoreError ?? .io(errno: EIO, context: describe(error))
        }
        fuse.unmount()
        // `vdiskfs unmount` waits on the control socket for this outcome.
        control?.finish(failure)
        log("\(Self.timestamp()) vdiskfs: \(exitStatus == 0 ? "done" : "exiting with errors")")
        return exitStatus
    }

    private func describe(_ error: any Error) -> String {
        (error as? StoreError)?.description ?? String(describing: error)
    }

    static func timestamp() -> String { ISO8601DateFormatter().string(from: Date()) }
}
