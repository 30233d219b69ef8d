// SPDX-License-Identifier: MIT
//
// Writes the seed corpus of frame_fuzz (tests/fuzz/corpus/frame/): one input per body type, plus streams
// of several frames, frames that start misaligned, one that stops halfway, and one the codec must refuse.
// Each input starts with frame_fuzz's 2-byte header (chunking seed, max_frame_bytes choice). Run by hand
// after a schema change:
//   ninja -C build tests/fuzz/make_frame_seeds && build/tests/fuzz/make_frame_seeds tests/fuzz/corpus/frame
// Single-threaded.
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/fuzz/frame_samples.h"

namespace {

using sluice::wire::Body;
using sluice::wire::BodyName;
using sluice::wire::samples::AllBodies;
using sluice::wire::samples::SampleFrame;

// frame_fuzz's max_frame_bytes choices: 0 = 1 KiB, 1 = 4 KiB, 2 = 64 KiB, 3 = 4 MiB.
std::string Header(uint8_t chunk_seed, uint8_t max_choice) {
  return std::string{static_cast<char>(chunk_seed), static_cast<char>(max_choice)};
}

// The frame with `extra` bytes of trailing padding: still valid, but the next frame starts misaligned.
std::string Padded(std::string frame, size_t extra) {
  frame.append(extra, '\0');
  uint32_t len = static_cast<uint32_t>(frame.size() - 4);
  for (int i = 0; i < 4; ++i) frame[i] = static_cast<char>(len >> (8 * i));
  return frame;
}

bool Write(const std::filesystem::path& dir, const std::string& name, const std::string& bytes) {
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", (dir / name).c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  std::filesystem::path dir = argv[1];
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  bool ok = !ec;

  uint8_t seed = 1;
  for (Body b : AllBodies()) {
    std::string name(BodyName(b));
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    ok = Write(dir, name, Header(seed, 3) + SampleFrame(b)) && ok;
    seed = static_cast<uint8_t>(seed + 37);
  }

  // A client's session: Hello, Subscribe, Credit, Publish, Ack; fed in small chunks.
  std::string session = SampleFrame(Body::Hello) + SampleFrame(Body::Subscribe) +
                        SampleFrame(Body::Credit) + SampleFrame(Body::Publish) +
                        SampleFrame(Body::Ack);
  ok = Write(dir, "session", Header(7, 2) + session) && ok;

  // Every body type back to back, each padded by a different amount so most start misaligned.
  std::string misaligned;
  size_t pad = 1;
  for (Body b : AllBodies()) misaligned += Padded(SampleFrame(b), pad++ % 8);
  ok = Write(dir, "all-misaligned", Header(200, 3) + misaligned) && ok;

  // A Deliver and a Request under the smallest max_frame_bytes, then a frame cut short.
  std::string deliver = SampleFrame(Body::Deliver);
  ok = Write(dir, "deliver-then-truncated",
             Header(99, 0) + deliver + deliver.substr(0, deliver.size() / 2)) && ok;

  // An Error frame followed by garbage: the decoder must fail on the second and stay failed.
  ok = Write(dir, "error-then-garbage",
             Header(3, 1) + SampleFrame(Body::Error) + std::string("\x10\0\0\0NOPE-NOT-A-FRAME", 20)) &&
       ok;
  // A Deliver whose nested envelope starts 4 bytes off an 8-byte boundary: it passes the nested
  // verifier (which checks alignment only relative to the envelope itself), so only the codec's own
  // check keeps the envelope's Uuid from being read misaligned (UBSan reports that read).
  {
    std::string stored = sluice::wire::samples::StoredEnvelope();
    flatbuffers::FlatBufferBuilder fbb;
    fbb.ForceVectorAlignment(stored.size(), 1, 8);
    fbb.Pad(4);
    auto nested = fbb.CreateVector(reinterpret_cast<const uint8_t*>(stored.data()), stored.size());
    sluice::wire::FinishFrame(fbb, Body::Deliver,
                              sluice::wire::CreateDeliver(fbb, 1, 2, 1, nested).Union());
    ok = Write(dir, "deliver-misaligned-envelope",
               Header(1, 3) + sluice::wire::samples::ToBytes(fbb)) && ok;
  }
  return ok ? 0 : 1;
}
