import ArgumentParser
import Foundation
import VDiskStore

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Check every chunk and every image's tree.",
        discussion: """
            Re-hashes every record of every pack with SHA-256 and walks every tree. Prints the \
            damaged chunks and the images that use them and exits 18 when anything is wrong. \
            --rebuild-index first rebuilds the chunk index from the packs alone.
            """)

    @OptionGroup var store: StoreOptions
    @Flag(help: "Rebuild the chunk index from the packs first.") var rebuildIndex = false
    @Flag(help: "Print the report as JSON.") var json = false
    @Flag(name: .shortAndLong, help: "No progress bar.") var quiet = false

    func run() throws {
        let s = try Store.open(at: try store.path, access: rebuildIndex ? .readWrite : .readOnly, purpose: "verify")
        if rebuildIndex {
            let bar = ProgressBar("index", quiet: quiet)
            try s.rebuildIndex(progress: bar.callback)
            bar.finish()
        }
        let bar = ProgressBar("verify", quiet: quiet)
        let r = try Verifier.verify(s, progress: bar.callback)
        bar.finish()
        if json { try printJSON(r) } else {
            for line in r.damagedChunks { print("damaged: \(line)") }
            for (name, why) in r.damagedImages.sorted(by: { $0.key < $1.key }) { print("damaged image: \(name): \(why)") }
            for line in r.tornTails { print("note: \(line)") }
            print("\(r.isClean ? "ok" : "DAMAGED"): \(r.packs) packs (\(formatBytes(r.packBytes))), \(r.records) records, \(r.images) images, \(r.treeNodes) tree nodes checked")
        }
        if !r.isClean { throw ExitCode(StoreError.damagedChunk(detail: "").exitCode) }
    }
}
