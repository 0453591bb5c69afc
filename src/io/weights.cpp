// The weights API: reading the torch.save format through LibTorch's zip
// reader and unpickler after io/weights_checks.h's checks, saving atomically,
// and loading into a model (io/weights_writer.cpp writes the bytes).
#include "io/weights.h"

#include "common/error.h"
#include "io/files.h"
#include "io/weights_checks.h"

#include <caffe2/serialize/read_adapter_interface.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/csrc/jit/serialization/unpickler.h>
#include <torch/torch.h>


#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

// Sanitized builds (GCC defines the first, clang has the feature test).
#if defined(__SANITIZE_ADDRESS__)
#define DTRAIN_LEAK_CHECKED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DTRAIN_LEAK_CHECKED 1
#endif
#endif
#ifdef DTRAIN_LEAK_CHECKED
#include <sanitizer/lsan_interface.h>
#endif

namespace dtrain {

namespace {

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string shape_of(const at::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

// Python's torch.save(model.state_dict()) pickles a collections.OrderedDict
// and then (pickle BUILD) its `_metadata` attribute, a dict of dicts written
// with SETITEM. LibTorch 1.13's unpickler turns OrderedDict into None (it only
// expects one as a tensor's empty backward-hooks slot) and knows no SETITEM.
// So for that exact shape of pickle we rewrite two places, leaving tensors'
// own OrderedDicts alone:
//   head  PROTO 2, GLOBAL collections.OrderedDict, PUT n, EMPTY_TUPLE, REDUCE
//     ->  PROTO 2, GLOBAL collections.OrderedDict, PUT n, EMPTY_DICT
//         (the GLOBAL stays memoized for the tensors; it is left on the stack)
//   tail  EMPTY_DICT, PUT m, '_metadata' ... BUILD, STOP  (the version dict)
//     ->  TUPLE2, STOP
// giving the tuple (global, state dict); the state dict is element 1.
// Returns false if the pickle is not of that shape (then it is used as is).
bool adapt_state_dict_pickle(std::string& pickle) {
  static const std::string head("\x80\x02" "ccollections\nOrderedDict\n", 27);
  if (pickle.compare(0, head.size(), head) != 0) return false;
  size_t pos = head.size();
  if (pos < pickle.size() && pickle[pos] == 'q') pos += 2;        // BINPUT n
  else if (pos < pickle.size() && pickle[pos] == 'r') pos += 5;   // LONG_BINPUT n
  else return false;
  if (pickle.compare(pos, 2, ")R") != 0) return false;
  pickle.replace(pos, 2, "}");

  static const std::string metadata_key("X\x09\x00\x00\x00_metadata", 14);
  const size_t key = pickle.rfind(metadata_key);
  size_t cut = std::string::npos;
  if (key != std::string::npos) {
    if (key >= 3 && pickle[key - 3] == '}' && pickle[key - 2] == 'q') cut = key - 3;
    else if (key >= 6 && pickle[key - 6] == '}' && pickle[key - 5] == 'r') cut = key - 6;
    else return false;
    if (pickle.compare(pickle.size() - 2, 2, "b.") != 0) return false;
  } else {
    if (pickle.empty() || pickle.back() != '.') return false;
    cut = pickle.size() - 1;
  }
  pickle.resize(cut);
  pickle += "\x86.";
  return true;
}

}  // namespace

NamedTensors model_state(const torch::nn::Module& model) {
  NamedTensors state;
  for (const auto& item : model.named_parameters()) state.emplace_back(item.key(), item.value());
  for (const auto& item : model.named_buffers()) state.emplace_back(item.key(), item.value());
  return state;
}

std::vector<char> serialize_weights(const NamedTensors& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, tensor] : tensors) dict.insert(name, tensor.detach().cpu().contiguous());
  return torch::pickle_save(c10::IValue(dict));
}

void save_weights(const NamedTensors& tensors, const std::string& path) {
  const std::string temporary = path + ".tmp";
  try {
    write_weights_file(tensors, temporary);
  } catch (const std::exception& e) {
    std::remove(temporary.c_str());
    throw Error(std::string(e.what()) + " (exporting weights; the earlier file, if any, is unchanged)");
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string message = io_failure("move into place", path);
    std::remove(temporary.c_str());
    throw Error(message + " (exporting weights; the earlier file, if any, is unchanged)");
  }
  const size_t slash = path.find_last_of('/');
  sync_directory(slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash));
}

namespace {

// The file's bytes for LibTorch's zip reader. LibTorch's own
// MemoryReadAdapter copies whatever range miniz asks for, even past the end
// (undefined behaviour, found by the weights fuzz harness on a damaged zip;
// fixed upstream after 1.13 in pytorch/pytorch#181193); this one returns only
// the bytes that exist.
class BoundedMemoryReader final : public caffe2::serialize::ReadAdapterInterface {
 public:
  BoundedMemoryReader(const uint8_t* bytes, size_t size) : bytes_(bytes), size_(size) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t position, void* out, size_t count, const char* /*what*/) const override {
    if (position >= size_) return 0;
    count = static_cast<size_t>(std::min<uint64_t>(count, size_ - position));
    std::memcpy(out, bytes_ + position, count);
    return count;
  }

 private:
  const uint8_t* bytes_;
  size_t size_;
};

}  // namespace

NamedTensors parse_weights(const uint8_t* bytes, size_t size, const std::string& name) {
  check_zip_layout(bytes, size, name);
  c10::IValue root;
  try {
    // LibTorch 1.13's zip reader leaks its miniz state when its constructor
    // throws on a malformed archive (found by the weights fuzz harness). No
    // LeakSanitizer suppression can name that allocation (libtorch_cpu has
    // no frame pointers; the stack ends in miniz's unnamed static functions)
    // and the one pattern that matched, all of libtorch_cpu.so, hid every
    // leaked tensor too. So the constructor's own allocations, and only
    // they, are not LeakSanitizer's to report.
    std::optional<caffe2::serialize::PyTorchStreamReader> opened;
    {
      auto adapter = std::make_shared<BoundedMemoryReader>(bytes, size);
#ifdef DTRAIN_LEAK_CHECKED
      __lsan::ScopedDisabler libtorch_leaks_on_a_malformed_zip;
#endif
      opened.emplace(std::move(adapter));
    }
    caffe2::serialize::PyTorchStreamReader& reader = *opened;
    at::DataPtr pickle_data;
    size_t pickle_size = 0;
    std::tie(pickle_data, pickle_size) = reader.getRecord("data.pkl");
    std::string pickle(static_cast<const char*>(pickle_data.get()), pickle_size);
    check_pickle_layout(pickle, name);
    const bool adapted = adapt_state_dict_pickle(pickle);
    if (adapted) check_pickle_layout(pickle, name);  // the rewrite cut at a byte pattern: check what it left

    size_t offset = 0;
    auto read = [&](char* buffer, size_t want) {
      want = std::min(want, pickle.size() - offset);
      std::memcpy(buffer, pickle.data() + offset, want);
      offset += want;
      return want;
    };
    auto read_record = [&](const std::string& record) { return std::get<0>(reader.getRecord("data/" + record)); };
    torch::jit::Unpickler unpickler(read, nullptr, nullptr, read_record, c10::Device(c10::kCPU));
    root = unpickler.parse_ivalue();
    if (adapted) root = root.toTupleRef().elements().at(1);
  } catch (const Error&) {
    throw;  // our own checks: already one line
  } catch (const c10::Error& e) {
    throw Error("cannot read weights from " + name + " (" + printable_excerpt(first_line(e.what_without_backtrace()), 120) +
                "); " + kResaveHint);
  } catch (const std::exception& e) {
    throw Error("cannot read weights from " + name + " (" + printable_excerpt(first_line(e.what()), 120) + "); " +
                kResaveHint);
  }
  if (!root.isGenericDict()) {
    throw Error(name + " does not hold a dict of name -> tensor (found " + root.tagKind() + "); " + kResaveHint);
  }
  NamedTensors tensors;
  for (const auto& item : root.toGenericDict()) {
    if (!item.key().isString() || !item.value().isTensor()) {
      throw Error(name + " holds an entry that is not name -> tensor; " + kResaveHint);
    }
    tensors.emplace_back(item.key().toStringRef(), item.value().toTensor());
  }
  return tensors;
}

NamedTensors read_weights(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    throw Error("weights file " + path + " does not exist: check the --init-from path");
  }
  // Mapped, not copied: a checkpoint is not held twice while it is read.
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat status {};
  if (descriptor < 0 || ::fstat(descriptor, &status) != 0) {
    const std::string reason = std::strerror(errno);
    if (descriptor >= 0) ::close(descriptor);
    throw Error("cannot read weights from " + path + ": " + reason);
  }
  const size_t size = static_cast<size_t>(status.st_size);
  void* mapped = size > 0 ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, descriptor, 0) : nullptr;
  ::close(descriptor);
  if (size > 0 && mapped == MAP_FAILED) throw Error("cannot read weights from " + path + ": " + std::strerror(errno));
  struct Unmap {
    void* address;
    size_t size;
    ~Unmap() {
      if (address) ::munmap(address, size);
    }
  } unmap{size > 0 ? mapped : nullptr, size};
  static const uint8_t kEmpty = 0;
  return parse_weights(size > 0 ? static_cast<const uint8_t*>(mapped) : &kEmpty, size, path);
}

void load_into(torch::nn::Module& model, const NamedTensors& tensors, const std::string& source) {
  std::map<std::string, at::Tensor> given(tensors.begin(), tensors.end());
  std::vector<std::string> problems;
  const NamedTensors expected = model_state(model);
  for (const auto& [name, target] : expected) {
    auto found = given.find(name);
    if (found == given.end()) {
      problems.push_back("missing " + name + " " + shape_of(target));
    } else if (!found->second.sizes().equals(target.sizes())) {
      problems.push_back(name + " is " + shape_of(found->second) + " in the file but " + shape_of(target) +
                         " in the model");
    }
  }
  std::map<std::string, bool> known;
  for (const auto& item : expected) known[item.first] = true;
  for (const auto& item : tensors) {
    if (!known.count(item.first)) problems.push_back("unexpected " + item.first);
  }
  if (!problems.empty()) {
    std::string list;
    for (size_t i = 0; i < problems.size() && i < 8; ++i) list += (i ? "; " : "") + problems[i];
    if (problems.size() > 8) list += "; and " + std::to_string(problems.size() - 8) + " more";
    throw Error(source + " does not match the model (" + list +
                "); check --model and --hidden, see docs/models.md for the names");
  }
  // A tied weight is one tensor under several names: the file must give it
  // one value, or which name wins would be an accident of order.
  std::map<const c10::TensorImpl*, std::string> first_name;
  for (const auto& [name, target] : expected) {
    const auto [first, inserted] = first_name.emplace(target.unsafeGetTensorImpl(), name);
    if (!inserted && !torch::equal(given.at(name).to(target.dtype()), given.at(first->second).to(target.dtype()))) {
      throw Error(source + " holds different values for " + first->second + " and " + name +
                  ", which are one tied weight in the model; save them equal (as the model's own state_dict does)");
    }
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : expected) target.copy_(given.at(name));
}

}  // namespace dtrain
