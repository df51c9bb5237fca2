import ArgumentParser
import VDiskStore

struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove an image (or an empty directory).",
        discussion: "Chunks no other image uses stay in the packs until garbage collection reclaims them.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The image's name in the store.") var name: String

    func run() throws {
        let s = try Store.open(at: try store.path, access: .readWrite, purpose: "rm")
        try s.remove(name)
    }
}
