#include "io/weights.h"

#include "common/error.h"
#include "io/files.h"

#include <caffe2/serialize/read_adapter_interface.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/csrc/jit/serialization/unpickler.h>
#include <torch/torch.h>

#include <zlib.h>

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

const char* const kResaveHint =
    "re-save it in Python with torch.save({k: v for k, v in model.state_dict().items()}, PATH)";

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

namespace {

void put16(std::string& out, uint16_t value) {
  out += static_cast<char>(value & 0xff);
  out += static_cast<char>(value >> 8);
}
void put32(std::string& out, uint32_t value) {
  put16(out, static_cast<uint16_t>(value & 0xffff));
  put16(out, static_cast<uint16_t>(value >> 16));
}

// Writes to a file, hashing every byte on the way.
class HashingWriter {
 public:
  explicit HashingWriter(const std::string& path) : path_(path) {
    descriptor_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (descriptor_ < 0) throw Error(io_failure("write", path));
  }
  ~HashingWriter() {
    if (descriptor_ >= 0) ::close(descriptor_);
  }
  void write(const void* bytes, size_t size) {
    const char* next = static_cast<const char*>(bytes);
    while (size > 0) {
      const size_t chunk = std::min<size_t>(size, size_t{8} << 20);
      digest_.update(next, chunk);
      write_all(descriptor_, next, chunk, path_);
      // Start writing this chunk back now, so that the final fsync has
      // little left to wait for (Linux; elsewhere the fsync does it all).
#ifdef SYNC_FILE_RANGE_WRITE
      ::sync_file_range(descriptor_, static_cast<off64_t>(offset_), static_cast<off64_t>(chunk), SYNC_FILE_RANGE_WRITE);
#endif
      next += chunk;
      size -= chunk;
      offset_ += chunk;
    }
  }
  void write(const std::string& bytes) { write(bytes.data(), bytes.size()); }
  uint64_t offset() const { return offset_; }
  WrittenFile finish() {
    if (::fsync(descriptor_) != 0) throw Error(io_failure("sync", path_));
    const int descriptor = descriptor_;
    descriptor_ = -1;
    if (::close(descriptor) != 0) throw Error(io_failure("write", path_));
    return {offset_, digest_.hex()};
  }

 private:
  std::string path_;
  int descriptor_ = -1;
  Sha256 digest_;
  uint64_t offset_ = 0;
};

}  // namespace

WrittenFile write_weights_file(const NamedTensors& tensors, const std::string& path) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, tensor] : tensors) dict.insert(name, tensor.detach().cpu().contiguous());
  // The pickle, as torch.save writes it: each storage a persistent id, its
  // bytes a record of its own (what LibTorch's pickle_save does, minus its
  // copy of every byte into one buffer and miniz's slow CRC-32).
  std::string pickle;
  // Without type tags (tag_aggregates false): the dict is a plain dict, which
  // torch.load(weights_only=True), PyTorch 2.6's default, accepts.
  torch::jit::Pickler pickler([&](const char* bytes, size_t size) { pickle.append(bytes, size); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
                              /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  struct Record {
    std::string name;
    const char* data;
    uint64_t size;
    uint32_t crc = 0;
    uint64_t offset = 0;  // of its local header
  };
  std::vector<torch::jit::WriteableTensorData> storages;
  for (const auto& tensor : pickler.tensorData()) storages.push_back(torch::jit::getWriteableTensorData(tensor));
  std::vector<Record> records;
  uint64_t total = pickle.size();
  for (size_t i = 0; i < storages.size(); ++i) {
    records.push_back({"archive/data/" + std::to_string(i), storages[i].data(), storages[i].sizeInBytes()});
    total += storages[i].sizeInBytes();
  }
  static const std::string kVersion = "3\n";  // the archive format LibTorch 1.13 and 2.x write and read
  records.push_back({"archive/data.pkl", pickle.data(), pickle.size()});
  records.push_back({"archive/version", kVersion.data(), kVersion.size()});
  if (total + 1024 * (records.size() + 1) >= (uint64_t{1} << 32) || records.size() >= 0xffff) {
    // Zip64 territory (4 GiB, or 65535 records): LibTorch's own zip writer,
    // fed the same untagged pickle and records, streaming through the hash.
    HashingWriter out(path);
    caffe2::serialize::PyTorchStreamWriter writer([&out](const void* bytes, size_t size) {
      out.write(bytes, size);
      return size;
    });
    for (size_t i = 0; i < storages.size(); ++i) {
      writer.writeRecord("data/" + std::to_string(i), storages[i].data(), storages[i].sizeInBytes());
    }
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeEndOfFile();
    return out.finish();
  }
  for (auto& record : records) {
    record.crc = static_cast<uint32_t>(crc32_z(0L, reinterpret_cast<const Bytef*>(record.data), record.size));
  }
  HashingWriter out(path);
  constexpr uint64_t kAlignment = 64;  // record data starts 64-byte aligned, as PyTorchStreamWriter does
  for (auto& record : records) {
    record.offset = out.offset();
    const uint64_t data_start = record.offset + 30 + record.name.size() + 4;
    const uint16_t padding = static_cast<uint16_t>((kAlignment - data_start % kAlignment) % kAlignment);
    std::string header;
    put32(header, 0x04034b50);
    put16(header, 20);  // version needed: 2.0
    put16(header, 0);   // flags
    put16(header, 0);   // stored
    put16(header, 0);   // time
    put16(header, 0x21);  // date: 1980-01-01
    put32(header, record.crc);
    put32(header, static_cast<uint32_t>(record.size));
    put32(header, static_cast<uint32_t>(record.size));
    put16(header, static_cast<uint16_t>(record.name.size()));
    put16(header, static_cast<uint16_t>(4 + padding));
    header += record.name;
    put16(header, 0x4246);  // "FB": padding, as PyTorchStreamWriter writes it
    put16(header, padding);
    header.append(padding, 'Z');
    out.write(header);
    out.write(record.data, record.size);
  }
  const uint64_t directory_offset = out.offset();
  std::string directory;
  for (const auto& record : records) {
    put32(directory, 0x02014b50);
    put16(directory, 20);  // made by
    put16(directory, 20);  // needed
    put16(directory, 0);
    put16(directory, 0);
    put16(directory, 0);
    put16(directory, 0x21);
    put32(directory, record.crc);
    put32(directory, static_cast<uint32_t>(record.size));
    put32(directory, static_cast<uint32_t>(record.size));
    put16(directory, static_cast<uint16_t>(record.name.size()));
    put16(directory, 0);  // extra
    put16(directory, 0);  // comment
    put16(directory, 0);  // disk
    put16(directory, 0);  // internal attributes
    put32(directory, 0);  // external attributes
    put32(directory, static_cast<uint32_t>(record.offset));
    directory += record.name;
  }
  std::string end;
  put32(end, 0x06054b50);
  put16(end, 0);
  put16(end, 0);
  put16(end, static_cast<uint16_t>(records.size()));
  put16(end, static_cast<uint16_t>(records.size()));
  put32(end, static_cast<uint32_t>(directory.size()));
  put32(end, static_cast<uint32_t>(directory_offset));
  put16(end, 0);
  out.write(directory);
  out.write(end);
  return out.finish();
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

uint32_t le32(const uint8_t* p) { return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24; }
uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint64_t le64(const uint8_t* p) { return uint64_t{le32(p)} | uint64_t{le32(p + 4)} << 32; }

// What can be checked before LibTorch's zip reader and unpickler see the
// bytes (LibTorch 1.13 has known crashes on malformed input): a zip whose
// central directory lies inside the file, whose entries are stored (torch.save
// does not compress) with sizes and offsets inside the file, one of them
// <archive>/data.pkl. Throws Error naming the first problem.
void check_zip_layout(const uint8_t* bytes, size_t size, const std::string& name) {
  auto refuse = [&](const std::string& problem) {
    throw Error("cannot read weights from " + name + " (" + problem + "); " + kResaveHint);
  };
  if (size < 22 || le32(bytes) != 0x04034b50) refuse("not a zip archive");
  // The end-of-central-directory record: within the last 64 KiB + 22 bytes.
  size_t end = std::string::npos;
  for (size_t at = size - 22 + 1; at-- > 0 && size - at <= 65535 + 22;) {
    if (le32(bytes + at) == 0x06054b50) {
      end = at;
      break;
    }
  }
  if (end == std::string::npos) refuse("no zip directory at its end: truncated?");
  uint64_t entries = le16(bytes + end + 10);
  uint64_t directory_size = le32(bytes + end + 12), directory_offset = le32(bytes + end + 16);
  // Zip64 fields (all ones) would let miniz allocate a claimed 4 GiB. In an
  // archive of 4 GiB or more they are genuine and left to LibTorch's checks;
  // in a smaller one only a zip64 end record for 65535 entries or more is
  // (LibTorch's writer makes one), and it must lie inside the file.
  constexpr uint64_t kZip64 = 0xffffffff;
  const bool large = size >= (uint64_t{1} << 32);
  if (entries == 0xffff || directory_offset == kZip64 || directory_size == kZip64) {
    if (large) return;
    if (end < 20 || le32(bytes + end - 20) != 0x07064b50) refuse("zip64 fields in a file under 4 GiB");
    const uint64_t record = le64(bytes + end - 20 + 8);
    if (record > end - 20 || end - 20 - record < 56 || le32(bytes + record) != 0x06064b50) {
      refuse("a damaged zip64 end record");
    }
    entries = le64(bytes + record + 32);
    directory_size = le64(bytes + record + 40);
    directory_offset = le64(bytes + record + 48);
    if (entries < 0xffff || directory_offset > record || directory_size > record - directory_offset ||
        entries > directory_size / 46) {
      refuse("zip64 fields in a file under 4 GiB");
    }
    end = record;  // the directory ends where the zip64 record starts
  }
  if (directory_offset + directory_size > end) refuse("its zip directory points past the end of the file");
  bool has_pickle = false;
  size_t at = directory_offset;
  for (size_t i = 0; i < entries; ++i) {
    if (at + 46 > end || le32(bytes + at) != 0x02014b50) refuse("a damaged zip directory");
    const uint16_t method = le16(bytes + at + 10);
    const uint64_t compressed = le32(bytes + at + 20), uncompressed = le32(bytes + at + 24);
    const size_t name_length = le16(bytes + at + 28), extra = le16(bytes + at + 30), comment = le16(bytes + at + 32);
    const uint64_t local = le32(bytes + at + 42);
    if (at + 46 + name_length > end) refuse("a damaged zip directory");
    const std::string entry(reinterpret_cast<const char*>(bytes + at + 46), name_length);
    if (compressed == kZip64 || uncompressed == kZip64 || local == kZip64) {
      if (!large) refuse("zip64 fields in a file under 4 GiB");
      return;
    }
    if (method != 0 || compressed != uncompressed) refuse("entry " + printable_excerpt(entry) + " is compressed; torch.save writes stored entries");
    // The data starts after the local header, whose name and extra field may
    // differ in length from the directory's.
    if (local + 30 > size || le32(bytes + local) != 0x04034b50) {
      refuse("entry " + printable_excerpt(entry) + " has no local header where the directory says");
    }
    const uint64_t data_start = local + 30 + le16(bytes + local + 26) + le16(bytes + local + 28);
    if (data_start + uncompressed > size) {
      refuse("entry " + printable_excerpt(entry) + " claims " + std::to_string(uncompressed) +
             " bytes past the end of the file");
    }
    const size_t slash = entry.find('/');
    has_pickle = has_pickle || (slash != std::string::npos && entry.compare(slash, std::string::npos, "/data.pkl") == 0);
    at += 46 + name_length + extra + comment;
  }
  if (!has_pickle) refuse("no data.pkl entry: not a file written by torch.save");
}

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

// The unpickler's stack, simulated: what each opcode pops and pushes, the
// marks, the memo and how deeply containers nest. LibTorch 1.13's unpickler
// trusts the pickle here: an opcode that pops an empty stack or a missing mark
// reads out of bounds (a SEGV found by the weights fuzz harness; upstream
// pytorch/pytorch#94300), a list appended into itself is a reference cycle
// that is never freed, and containers nested a million deep overflow the call
// stack when they are destroyed. A torch.save pickle does none of these: it
// builds each container fully before it puts it into another, nests a few
// levels deep and ends with one value on the stack.
class PickleStack {
 public:
  using Refuse = std::function<void(const std::string&)>;
  explicit PickleStack(Refuse refuse) : refuse_(std::move(refuse)) {}

  void mark() { marks_.push_back(stack_.size()); }
  void push_leaf() { stack_.push_back(kLeaf); }
  // Pops `count` values above the top mark; returns them bottom first.
  std::vector<uint32_t> pop(size_t count) {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() < floor + count) refuse_("a pickle opcode pops more values than the stack holds");
    std::vector<uint32_t> values(stack_.end() - static_cast<std::ptrdiff_t>(count), stack_.end());
    stack_.resize(stack_.size() - count);
    return values;
  }
  // Pops everything above the top mark, and the mark.
  std::vector<uint32_t> pop_to_mark() {
    if (marks_.empty()) refuse_("a pickle opcode needs a MARK that is not there");
    std::vector<uint32_t> values(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return values;
  }
  uint32_t top() {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) refuse_("a pickle opcode reads a value the stack does not hold");
    return stack_.back();
  }
  // A new container holding `children`, which can no longer change.
  void push_container(const std::vector<uint32_t>& children) {
    uint32_t depth = 1;
    for (uint32_t child : children) {
      depth = std::max(depth, depth_of(child) + 1);
      seal(child);
    }
    push_object(depth, false);
  }
  // What a REDUCE or BUILD leaves: it may be (part of) its argument.
  void push_result(uint32_t callable, uint32_t argument) {
    const uint32_t depth = std::max(depth_of(callable), depth_of(argument));
    // An argument that holds containers may hand one back (build_intlist
    // does): the result may then be a container that is already inside
    // another, so it must not change.
    push_object(depth, depth > 1);
    seal(argument);
  }
  // Puts `children` into the container at `target` (APPEND, SETITEM, ...).
  void fill(uint32_t target, const std::vector<uint32_t>& children) {
    if (target == kLeaf) return;  // not a container: LibTorch refuses it
    Object& object = objects_[target];
    if (object.sealed) refuse_("a pickle changes a container after putting it into another");
    for (uint32_t child : children) {
      if (child == target) refuse_("a pickle puts a container into itself");
      object.depth = std::max(object.depth, depth_of(child) + 1);
      seal(child);
    }
    check_depth(object.depth);
  }
  // The value below the top mark (APPENDS and SETITEMS fill it).
  uint32_t below_mark() {
    if (marks_.empty()) refuse_("a pickle opcode needs a MARK that is not there");
    const size_t floor = marks_.size() > 1 ? marks_[marks_.size() - 2] : 0;
    if (marks_.back() <= floor) refuse_("a pickle opcode fills a container the stack does not hold");
    return stack_[marks_.back() - 1];
  }
  void dup() { stack_.push_back(top()); }
  void put(uint64_t id) { memo_[id] = top(); }
  void memoize() { memo_[memo_.size()] = top(); }
  void get(uint64_t id) {
    const auto found = memo_.find(id);
    if (found == memo_.end()) refuse_("a pickle reads a memo entry it never wrote");
    stack_.push_back(found->second);
  }
  void stop() {
    if (stack_.size() != 1 || !marks_.empty()) {
      refuse_("the pickle ends with " + std::to_string(stack_.size()) + " values and " +
              std::to_string(marks_.size()) + " marks instead of one value");
    }
  }

 private:
  static constexpr uint32_t kLeaf = 0;
  static constexpr uint32_t kMaxDepth = 100;
  struct Object {
    uint32_t depth;
    bool sealed;
  };
  uint32_t depth_of(uint32_t id) const { return id == kLeaf ? 0 : objects_[id].depth; }
  void seal(uint32_t id) {
    if (id != kLeaf) objects_[id].sealed = true;
  }
  void check_depth(uint32_t depth) {
    if (depth > kMaxDepth) refuse_("containers in the pickle nest more than " + std::to_string(kMaxDepth) + " deep");
  }
  void push_object(uint32_t depth, bool sealed) {
    check_depth(depth);
    objects_.push_back({depth, sealed});
    stack_.push_back(static_cast<uint32_t>(objects_.size() - 1));
  }

  Refuse refuse_;
  std::vector<Object> objects_{{0, true}};  // id 0: every leaf (numbers, strings, tensors, None)
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, uint32_t> memo_;
};

// Walks the pickle's opcodes before LibTorch's unpickler runs them: every
// opcode must be one a torch.save pickle (protocol 2) may hold, every length
// an opcode claims must fit in what is left, and the stack effects must be
// sound (PickleStack). LibTorch 1.13 reserves a claimed string length before
// reading it, so a 4-byte length of 4 GB is an allocation of 4 GB
// (pytorch/pytorch#185443); memo ids are bounded the same way.
void check_pickle_layout(const std::string& pickle, const std::string& name) {
  auto refuse = [&](const std::string& problem) {
    throw Error("cannot read weights from " + name + " (" + problem + "); " + kResaveHint);
  };
  const auto* bytes = reinterpret_cast<const uint8_t*>(pickle.data());
  const size_t size = pickle.size();
  size_t at = 0;
  // Skips `count` argument bytes, or to and past the next newline (count < 0).
  auto skip = [&](int64_t count) {
    if (count < 0) {
      const size_t newline = pickle.find('\n', at);
      if (newline == std::string::npos) refuse("a pickle opcode's argument runs past the end");
      at = newline + 1;
    } else {
      if (static_cast<uint64_t>(count) > size - at) refuse("a pickle opcode claims more bytes than the file holds");
      at += static_cast<size_t>(count);
    }
  };
  auto length = [&](int width) -> uint64_t {
    if (static_cast<size_t>(width) > size - at) refuse("a pickle opcode's length runs past the end");
    uint64_t value = 0;
    for (int i = width - 1; i >= 0; --i) value = value << 8 | bytes[at + static_cast<size_t>(i)];
    at += static_cast<size_t>(width);
    return value;
  };
  // LibTorch sizes its memo table by the largest id; a pickle puts at most
  // one memo per byte, so a larger id is a damaged file.
  auto memo_id = [&](int width) {
    const uint64_t id = length(width);
    if (id >= size) refuse("a pickle memo id past the pickle's size");
    return id;
  };
  PickleStack stack(refuse);
  while (at < size) {
    const uint8_t opcode = bytes[at++];
    switch (opcode) {
      case '.': stack.stop(); return;                     // STOP
      case '(': stack.mark(); break;                      // MARK
      case '0': stack.pop(1); break;                      // POP
      case '1': stack.pop_to_mark(); break;               // POP_MARK
      case '2': stack.dup(); break;                       // DUP
      case 'N': case 0x88: case 0x89: stack.push_leaf(); break;  // None, True, False
      case ')': case ']': case '}': case 0x8f: stack.push_container({}); break;  // empty containers
      case 't': case 'l': case 'd': case 0x91: stack.push_container(stack.pop_to_mark()); break;
      case 0x85: stack.push_container(stack.pop(1)); break;  // TUPLE1..3
      case 0x86: stack.push_container(stack.pop(2)); break;
      case 0x87: stack.push_container(stack.pop(3)); break;
      case 'a': {                                          // APPEND
        const auto item = stack.pop(1);
        stack.fill(stack.top(), item);
        break;
      }
      case 's': {                                          // SETITEM
        const auto item = stack.pop(2);
        stack.fill(stack.top(), item);
        break;
      }
      case 'e': case 'u': case 0x90: {                     // APPENDS, SETITEMS, ADDITEMS
        const uint32_t target = stack.below_mark();
        stack.fill(target, stack.pop_to_mark());
        break;
      }
      case 'R': case 'b': {                                // REDUCE, BUILD
        const auto call = stack.pop(2);
        stack.push_result(call[0], call[1]);
        break;
      }
      case 0x81: stack.pop(1); stack.top(); break;         // NEWOBJ: pops the arguments
      case 0x92: stack.pop(2); stack.top(); break;         // NEWOBJ_EX
      case 0x93: stack.pop(2); stack.push_leaf(); break;   // STACK_GLOBAL
      case 'Q': stack.pop(1); stack.push_leaf(); break;    // BINPERSID: a tensor
      case 0x94: stack.memoize(); break;                   // MEMOIZE
      case 0x80: skip(1); break;                           // PROTO
      case 0x95: skip(8); break;                           // FRAME
      case 'q': stack.put(memo_id(1)); break;              // BINPUT
      case 'r': stack.put(memo_id(4)); break;              // LONG_BINPUT
      case 'h': stack.get(memo_id(1)); break;              // BINGET
      case 'j': stack.get(memo_id(4)); break;              // LONG_BINGET
      case 'K': skip(1); stack.push_leaf(); break;         // BININT1
      case 'M': skip(2); stack.push_leaf(); break;         // BININT2
      case 'J': skip(4); stack.push_leaf(); break;         // BININT
      case 'G': skip(8); stack.push_leaf(); break;         // BINFLOAT
      case 'c': skip(-1); skip(-1); stack.push_leaf(); break;  // GLOBAL module\nname\n
      case 'I': case 'L': case 'F': case 'S': case 'V': case 'P': skip(-1); stack.push_leaf(); break;
      case 'p': case 'g': {                                // PUT, GET with a decimal id
        const size_t line = at;
        skip(-1);
        uint64_t id = 0;
        for (size_t i = line; i + 1 < at; ++i) {
          if (bytes[i] < '0' || bytes[i] > '9' || id >= size) refuse("a damaged pickle memo id");
          id = id * 10 + (bytes[i] - '0');
        }
        if (opcode == 'p') stack.put(id); else stack.get(id);
        break;
      }
      case 'U': case 'C': case 0x8a: case 0x8c:            // short strings, LONG1, SHORT_BINUNICODE
        skip(static_cast<int64_t>(length(1)));
        stack.push_leaf();
        break;
      case 'X': case 'T': case 'B': case 0x8b: {           // BINUNICODE, BINSTRING, BINBYTES, LONG4
        const uint64_t count = length(4);
        if (count > size - at) refuse("a pickle string claims " + std::to_string(count) + " bytes past the end");
        skip(static_cast<int64_t>(count));
        stack.push_leaf();
        break;
      }
      case 0x8d: case 0x8e: case 0x96: {                   // BINUNICODE8, BINBYTES8, BYTEARRAY8
        const uint64_t count = length(8);
        if (count > size - at) refuse("a pickle string claims " + std::to_string(count) + " bytes past the end");
        skip(static_cast<int64_t>(count));
        stack.push_leaf();
        break;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", opcode);
        refuse(std::string("pickle opcode ") + hex + " is not one torch.save writes");
      }
    }
  }
  refuse("the pickle has no STOP opcode: truncated");
}

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
