// Model weights as files that PyTorch reads and writes: torch.load(PATH) in
// Python gives a dict of name -> tensor, and a state_dict saved in Python with
// torch.save(model.state_dict(), PATH) loads here. LibTorch's own pickler and
// zip reader do the work; weights.cpp adapts them where LibTorch 1.13 falls
// short (the OrderedDict a state_dict pickles to, the archive version, and
// input checks that its unpickler lacks on malformed files).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace torch::nn {
class Module;
}

namespace dtrain {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Parameters then buffers, by their registered names.
NamedTensors model_state(const torch::nn::Module& model);

// The bytes torch.save would write for this dict of name -> tensor.
std::vector<char> serialize_weights(const NamedTensors& tensors);

// What write_weights_file wrote.
struct WrittenFile {
  uint64_t bytes = 0;
  std::string xxh3_128;  // of the whole file, 32 hex digits (io/files.h)
};

// Writes `tensors` as the bytes torch.save would (a zip of stored records:
// archive/data.pkl, archive/data/N, archive/version) straight from the
// tensors' memory to `path`, with the zip's CRC-32 (libdeflate) and the
// file's XXH3-128 computed on the way, then fsyncs it. About 3x faster than serializing
// through LibTorch's pickle_save; files of 4 GiB or more take that path.
WrittenFile write_weights_file(const NamedTensors& tensors, const std::string& path);

// write_weights_file, atomically (temporary file, then rename): a failed
// write never leaves a half-written file where the old one was. Errors name the OS's reason.
void save_weights(const NamedTensors& tensors, const std::string& path);

// Reads a name -> tensor dict written by save_weights or by Python's
// torch.save (plain dict or state_dict OrderedDict). Throws Error with a
// one-line message on anything else.
NamedTensors read_weights(const std::string& path);

// The same from the file's bytes in memory (`name` is what errors call it):
// the entry point of the fuzz harness. The zip's layout is checked before
// LibTorch's reader sees it.
NamedTensors parse_weights(const uint8_t* bytes, size_t size, const std::string& name);

// Copies `tensors` into the model. Every name must match and every shape
// agree; otherwise throws Error listing the differences.
void load_into(torch::nn::Module& model, const NamedTensors& tensors, const std::string& source);

}  // namespace dtrain
