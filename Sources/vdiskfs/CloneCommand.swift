import ArgumentParser
import VDiskStore

struct CloneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clone", abstract: "Make a new image sharing every chunk of another (instant).",
        discussion: "No data is copied: the clone starts with the source's tree. Writing either one never changes the other.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "The image to clone, or @SNAPSHOT/path for one kept in a snapshot.") var source: String
    @Argument(help: "The new image's name.") var target: String

    func run() throws {
        let s = try Store.open(at: try store.path, access: .readWrite, purpose: "clone")
        try s.clone(source, to: target)
    }
}
