// SPDX-License-Identifier: MIT
//
// A main() for libFuzzer targets in builds without libFuzzer (gcc, -Dfuzz=false): runs every file named
// on the command line, and every regular file of every directory named, through
// LLVMFuzzerTestOneInput once, in name order. So each seed corpus and every crash reproducer added to it
// replays as an ordinary test (as systemd does). A directory holding no input fails: a replay that runs
// nothing proves nothing. Single-threaded.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// Optional in a target, as with libFuzzer.
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

bool ReadFile(const std::filesystem::path& path, std::vector<uint8_t>* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);

  size_t total = 0;
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path arg = argv[i];
    std::vector<std::filesystem::path> inputs;
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      for (std::filesystem::directory_iterator it(arg, ec), end; !ec && it != end; it.increment(ec)) {
        if (it->is_regular_file(ec)) inputs.push_back(it->path());
      }
      if (ec) {
        std::fprintf(stderr, "%s: %s\n", arg.c_str(), ec.message().c_str());
        return 1;
      }
      if (inputs.empty()) {
        std::fprintf(stderr, "%s: no inputs to replay\n", arg.c_str());
        return 1;
      }
      std::sort(inputs.begin(), inputs.end());
    } else {
      inputs.push_back(arg);
    }
    for (const auto& path : inputs) {
      std::vector<uint8_t> data;
      if (!ReadFile(path, &data)) {
        std::fprintf(stderr, "%s: cannot read\n", path.c_str());
        return 1;
      }
      // Print before running, so a crash names its input.
      std::fprintf(stderr, "replaying %s (%zu bytes)\n", path.c_str(), data.size());
      LLVMFuzzerTestOneInput(data.data(), data.size());
      ++total;
    }
  }
  std::fprintf(stderr, "replayed %zu inputs\n", total);
  return 0;
}
