import ArgumentParser
import VDiskStore

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats", abstract: "Show the store's size, dedup and compression.",
        discussion: "--json prints logical_bytes, stored_bytes, chunk counts and the ratios for scripts.")

    @OptionGroup var store: StoreOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let s = try Store.open(at: try store.path, access: .readOnly, purpose: "stats")
        let st = try s.stats()
        if json { try printJSON(st); return }
        print("images:           \(st.images)")
        print("logical size:     \(formatBytes(st.logicalBytes))")
        print("allocated:        \(formatBytes(st.allocatedBytes)) (non-zero blocks)")
        print("unique chunks:    \(st.uniqueChunks) (\(formatBytes(st.chunkRawBytes)) raw, \(formatBytes(st.chunkStoredBytes)) stored)")
        print("tree nodes:       \(st.treeNodes)")
        print("packs:            \(st.packs) (\(formatBytes(st.packBytes)))")
        print("index:            \(formatBytes(st.indexBytes))")
        print("on disk:          \(formatBytes(st.storedBytes))")
        print(String(format: "dedup ratio:      %.2f", st.dedupRatio))
        print(String(format: "compression:      %.2f", st.compressionRatio))
        print(String(format: "logical/on disk:  %.2f", st.overallRatio))
    }
}
