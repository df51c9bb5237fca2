import ArgumentParser
import Foundation
import VDiskStore

struct GCCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc", abstract: "Reclaim the space of chunks no image or snapshot uses.",
        discussion: """
            Marks every chunk reachable from the images and snapshots, then deletes packs with \
            nothing live and rewrites packs whose live share is below --threshold. --dry-run \
            prints the plan (bytes to free, packs to delete and rewrite) and changes nothing. \
            On a mounted store the running mount collects (writes go on meanwhile; chunks its \
            journal still names stay). A journal left by a crashed mount must be replayed first \
            (mount and unmount once; exit 22 otherwise). On a shared (rados://) store gc needs \
            every host's mount gone (exit 13 names the writers), deletes only packs with nothing \
            live (live chunks never move there), and waits for crashed mounts' journals (exit 22).
            """)

    @OptionGroup var store: StoreOptions
    @Flag(help: "Print the plan only.") var dryRun = false
    @Option(help: "Rewrite packs less than this share live (0 to 1).") var threshold: Double = 0.5
    @Flag(help: "Print the plan as JSON.") var json = false
    @Flag(name: .shortAndLong, help: "No progress bar.") var quiet = false

    func run() throws {
        guard threshold >= 0 && threshold <= 1 else { throw StoreError.invalidArgument("--threshold must be between 0 and 1") }
        let path = try store.path
        let s: Store
        do {
            // A shared store: no writer on any host while gc runs (its exclusive lock).
            let backend = try StoreBackends.backend(for: path)
            s = try Store.open(backend: backend, access: dryRun ? .readOnly : .readWrite,
                               lockMode: dryRun ? .read : (backend.isShared ? .exclusive : .write), purpose: "gc")
        } catch StoreError.storeLocked(let p, let holder) where !path.contains("://") {
            // Mounted: the running mount collects, with its journal's needs marked live.
            guard let reply = try VolumeControl.send(store: path, ["op": "gc", "threshold": threshold, "dry_run": dryRun]) else {
                throw StoreError.storeLocked(path: p, holder: holder)
            }
            let plan = try JSONDecoder().decode(CollectionPlan.self, from: JSONSerialization.data(withJSONObject: reply["plan"] ?? [:]))
            if json { try printJSON(plan) } else {
                print("\(dryRun ? "would free" : "freed") \(formatBytes(plan.bytesToFree)) (by the mount): delete \(plan.packsToDelete.count) packs, rewrite \(plan.packsToRewrite.count), keep \(plan.packsKept)")
            }
            return
        }
        let before = try s.diskBytes()
        let markBar = ProgressBar("plan", quiet: quiet || json)
        let (plan, live) = try GarbageCollector.plan(s, threshold: threshold, progress: markBar.callback)
        markBar.finish()
        if json { try printJSON(plan) } else {
            print("\(dryRun ? "would free" : "freeing") \(formatBytes(plan.bytesToFree)): delete \(plan.packsToDelete.count) packs, rewrite \(plan.packsToRewrite.count) (moving \(formatBytes(plan.liveBytesToMove)) live), keep \(plan.packsKept); \(plan.liveChunks) live records")
        }
        guard !dryRun else { return }
        let bar = ProgressBar("gc", quiet: quiet || json)
        try GarbageCollector.execute(s, plan, live: live, progress: bar.callback)
        bar.finish()
        let after = try s.diskBytes()
        if !json { print("freed \(formatBytes(before.packs - after.packs)) of packs (\(formatBytes(before.packs)) → \(formatBytes(after.packs)))") }
    }
}
