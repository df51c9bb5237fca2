import ArgumentParser
import Foundation
import VDiskStore

struct TrimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trim", abstract: "Turn blocks an image's file systems mark free into zero blocks.",
        discussion: """
            Reads the image's partition table and ext2/3/4 block bitmaps through the store and \
            stores a new version in which free blocks are zero blocks (they read back as zeros). \
            What only the old version used returns with gc. Snapshots keep their versions. \
            On a mounted store the running mount does it; it is refused (exit 22) while the \
            image is open for writing there.
            """)

    @OptionGroup var store: StoreOptions
    @Argument(help: "The image's name.") var name: String
    @Flag(help: "Print the report as JSON.") var json = false

    func run() throws {
        let path = try store.path
        let r: TrimReport
        do {
            r = try Store.open(at: path, access: .readWrite, purpose: "trim").trim(name)
        } catch StoreError.storeLocked(let p, let holder) {
            // Mounted: the mount trims the image, unless it is open for writing there.
            guard let reply = try VolumeControl.send(store: path, ["op": "trim", "image": name]) else {
                throw StoreError.storeLocked(path: p, holder: holder)
            }
            r = try JSONDecoder().decode(TrimReport.self, from: JSONSerialization.data(withJSONObject: reply["report"] ?? [:]))
        }
        for note in r.notes where note.hasPrefix("warning:") { FileHandle.standardError.write(Data("vdiskfs: \(note)\n".utf8)) }
        if json { try printJSON(r) } else { print("\(r.name): \(r.freedBlocks) blocks (\(formatBytes(Int64(r.freedBytes)))) marked free by the file system are now zero blocks") }
    }
}
