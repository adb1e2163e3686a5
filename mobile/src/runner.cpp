#include "runner.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "isolated_check.h"
#include "process_stats.h"
#include "threads.h"

namespace shifter {
namespace {

using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::Program;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

double elapsed_ms(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Latencies are reported to 0.1 microsecond; more digits would only be noise.
double rounded(double value, double scale = 1e4) {
  return std::round(value * scale) / scale;
}

// Nearest-rank percentile of sorted values: the smallest value with at least p% at or below it.
double percentile(const std::vector<double>& sorted, double p) {
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * sorted.size()));
  return sorted[std::max<size_t>(rank, 1) - 1];
}

std::string real_path(const std::string& path) {
  char resolved[PATH_MAX];
  return realpath(path.c_str(), resolved) == nullptr ? std::string() : std::string(resolved);
}

// Closes the descriptor on every path out of a scope.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() {
    if (fd >= 0) close(fd);
  }
};

// Why one variant cannot be loaded; recorded as a LoadFailure, never seen by a client as an exception.
class VariantError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    out += (i ? "," : "") + std::to_string(shape[i]);
  }
  return out + "]";
}

}  // namespace

void fill_pattern(std::vector<float>& values) {
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>((i * 37) % 101) / 50.0f - 1.0f;
  }
}

std::unique_ptr<Runner> Runner::load(std::string portfolio_dir, Manifest manifest, RunnerOptions options) {
  std::unique_ptr<Runner> runner(new Runner(std::move(portfolio_dir), std::move(manifest), std::move(options)));
  runner->protect_portfolio_files();
  runner->load_variants();
  return runner;
}

Runner::Runner(std::string portfolio_dir, Manifest manifest, RunnerOptions options)
    : portfolio_dir_(std::move(portfolio_dir)),
      manifest_(std::move(manifest)),
      options_(std::move(options)),
      isolation_(options_.isolate ? Isolation::Subprocess : Isolation::Off) {
  size_t numel = 1;
  for (int32_t dim : manifest_.input_shape) numel *= size_t(dim);
  input_.resize(numel);
  fill_pattern(input_);
  input_tensor_ = executorch::extension::from_blob(
      input_.data(), {manifest_.input_shape.begin(), manifest_.input_shape.end()});
}

void Runner::protect_portfolio_files() {
  portfolio_root_ = real_path(portfolio_dir_);
  struct stat info;
  if (stat((portfolio_root_ + "/manifest.json").c_str(), &info) == 0) {
    protected_files_.insert({uint64_t(info.st_dev), uint64_t(info.st_ino)});
  }
  for (const VariantFile& file : manifest_.variants) {
    if (!file.path.empty() && stat(file.path.c_str(), &info) == 0) {
      protected_files_.insert({uint64_t(info.st_dev), uint64_t(info.st_ino)});
    }
  }
}

void Runner::load_variants() {
  for (VariantFile& file : manifest_.variants) {
    if (!wanted(file)) {
      continue;
    }
    try {
      std::unique_ptr<LoadedVariant> variant = load_variant(file);
      by_name_[variant->name] = variant.get();
      variants_.push_back(std::move(variant));
    } catch (const VariantError& e) {
      failures_.push_back({file.name, e.what()});
    }
  }
  current_ = variants_.empty() ? nullptr : variants_.front().get();
}

bool Runner::wanted(const VariantFile& file) const {
  const auto& only = options_.only_variants;
  return only.empty() || std::find(only.begin(), only.end(), file.name) != only.end();
}

std::unique_ptr<LoadedVariant> Runner::load_variant(VariantFile& file) {
  const auto verify_start = Clock::now();
  verify_variant_file(file, options_.verify);
  const double verify_ms = elapsed_ms(verify_start);
  if (!file.error.empty()) {
    throw VariantError(file.error);
  }
  const double check_ms = trial_load(file);
  std::unique_ptr<LoadedVariant> variant;
  try {
    variant = open_program(file);
    variant->first_infer_ms = first_inference_ms(*variant);
  } catch (const VariantError&) {
    throw;
  } catch (const CommandError& e) {  // the first inference failed
    throw VariantError(e.what());
  } catch (const std::exception& e) {  // e.g. bad_alloc for a corrupt memory plan
    throw VariantError("variant '" + file.name + "': loading failed (" + e.what() +
                       "); the .pte is corrupt or not an ExecuTorch program, re-export it");
  }
  variant->verify_ms = verify_ms;
  variant->check_ms = check_ms;
  return variant;
}

double Runner::trial_load(const VariantFile& file) {
  if (isolation_ != Isolation::Subprocess) {
    return 0;
  }
  const auto start = Clock::now();
  const IsolatedCheck check =
      check_in_subprocess(portfolio_dir_, options_.precision, file.name, options_.threads);
  switch (check.outcome) {
    case IsolatedCheck::Outcome::Crashed:
      throw VariantError("variant '" + file.name + "': loading it crashed a trial process (" +
                         check.detail + "); the .pte is corrupt although it matches the manifest, re-export it");
    case IsolatedCheck::Outcome::Unavailable:  // from now on, variants load without a trial
      isolation_ = Isolation::Unavailable;
      isolation_problem_ = check.detail;
      return 0;
    case IsolatedCheck::Outcome::Passed:
    case IsolatedCheck::Outcome::Failed:  // the load below tells why
      break;
  }
  return elapsed_ms(start);
}

std::unique_ptr<LoadedVariant> Runner::open_program(const VariantFile& file) {
  auto variant = std::make_unique<LoadedVariant>();
  variant->name = file.name;
  variant->path = file.path;
  variant->bytes = file.bytes;
  const auto start = Clock::now();
  variant->module = std::make_unique<Module>(file.path, Module::LoadMode::Mmap);
  // Full flatbuffer verification: a corrupt file must fail here, not crash later.
  Error status = variant->module->load(Program::Verification::InternalConsistency);
  if (status != Error::Ok) {
    throw VariantError("variant '" + file.name + "': cannot load program '" + file.path + "' (" +
                       executorch::runtime::to_string(status) +
                       "); the .pte is corrupt or was exported for another ExecuTorch version (runner "
                       "built against " SHIFTER_EXECUTORCH_VERSION ")");
  }
  check_forward_input(file, *variant->module);
  status = variant->module->load_method("forward");
  if (status != Error::Ok) {
    throw VariantError("variant '" + file.name + "': cannot load method 'forward' (" +
                       executorch::runtime::to_string(status) +
                       "); the program is invalid, or needs an operator or delegate this runner was not "
                       "built with");
  }
  variant->load_ms = elapsed_ms(start);
  return variant;
}

void Runner::check_forward_input(const VariantFile& file, Module& module) const {
  auto meta = module.method_meta("forward");
  if (!meta.ok()) {
    throw VariantError("variant '" + file.name + "': program has no 'forward' method");
  }
  if (meta->num_inputs() != 1 || !meta->input_tensor_meta(0).ok()) {
    throw VariantError("variant '" + file.name + "': forward takes " + std::to_string(meta->num_inputs()) +
                       " inputs; the runner feeds exactly one float32 tensor");
  }
  const auto tensor_meta = meta->input_tensor_meta(0);
  std::vector<int64_t> expected(manifest_.input_shape.begin(), manifest_.input_shape.end());
  std::vector<int64_t> actual(tensor_meta->sizes().begin(), tensor_meta->sizes().end());
  if (actual != expected || tensor_meta->scalar_type() != executorch::aten::ScalarType::Float) {
    throw VariantError("variant '" + file.name + "': forward expects a tensor of shape " + shape_text(actual) +
                       " (scalar type " + std::to_string(int(tensor_meta->scalar_type())) +
                       ") but the manifest input is float32 " + shape_text(expected) +
                       "; re-export the variant with the manifest's input shape");
  }
}

std::string Runner::isolation_text() const {
  switch (isolation_) {
    case Isolation::Subprocess:
      return "subprocess";
    case Isolation::Off:
      return "off";
    case Isolation::Unavailable:
      return "unavailable: " + isolation_problem_;
  }
  return "unknown";
}

double Runner::first_inference_ms(LoadedVariant& variant) {
  fill_pattern(input_);
  return run(variant, 1).front();
}

std::vector<double> Runner::run(LoadedVariant& variant, int64_t runs) {
  std::vector<double> latencies;
  latencies.reserve(size_t(runs));
  const executorch::runtime::EValue input(*input_tensor_);
  for (int64_t i = 0; i < runs; ++i) {
    const auto start = Clock::now();
    auto outputs = variant.module->forward(input);
    latencies.push_back(elapsed_ms(start));
    if (!outputs.ok()) {
      throw CommandError("variant '" + variant.name + "': forward failed (" +
                         executorch::runtime::to_string(outputs.error()) + ")");
    }
    ++inferences_;
    if (i + 1 < runs) {
      continue;
    }
    if (outputs->empty() || !outputs->front().isTensor() ||
        outputs->front().toTensor().scalar_type() != executorch::aten::ScalarType::Float) {
      throw CommandError("variant '" + variant.name +
                         "': first output is not a float32 tensor; the runner reports only that kind");
    }
    // The output lives in the method's planned memory: copy it before the next run reuses it.
    const auto& tensor = outputs->front().toTensor();
    const float* data = tensor.const_data_ptr<float>();
    last_output_.assign(data, data + tensor.numel());
    last_output_shape_.assign(tensor.sizes().begin(), tensor.sizes().end());
  }
  return latencies;
}

LoadedVariant* Runner::activate(const std::string& name) {
  auto found = by_name_.find(name);
  if (found == by_name_.end()) {
    return nullptr;
  }
  current_ = found->second;
  return current_;
}

LoadedVariant& Runner::resolve(const std::string& name) {
  if (name.empty()) {
    if (current_ == nullptr) {
      throw CommandError("no variant is loaded; see the 'failed' list of the ready line");
    }
    return *current_;
  }
  auto found = by_name_.find(name);
  if (found == by_name_.end()) {
    std::string known;
    for (const auto& variant : variants_) known += (known.empty() ? "" : ", ") + variant->name;
    for (const LoadFailure& failure : failures_) {
      if (failure.name == name) {
        throw CommandError("variant '" + name + "' failed to load: " + failure.error);
      }
    }
    throw CommandError("unknown variant '" + name + "'; loaded: " +
                       (known.empty() ? std::string("(none)") : known));
  }
  return *found->second;
}

json Runner::handle(const Request& request) {
  switch (request.command) {
    case Command::Switch:
      return do_switch(request);
    case Command::Infer:
      return infer(request);
    case Command::Bench:
      return bench(request);
    case Command::BenchReload:
      return bench_reload(request);
    case Command::Stats:
      return stats();
    case Command::Quit:
      return json::object();
  }
  throw CommandError("command '" + request.cmd + "' is not implemented");
}

json Runner::do_switch(const Request& request) {
  resolve(request.variant);  // validates the name with a helpful error, outside the timing
  const std::string previous = current_ ? current_->name : "";
  const auto start = Clock::now();
  activate(request.variant);
  const double switch_us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
  return {{"variant", current_->name}, {"previous", previous}, {"switch_us", rounded(switch_us, 1e3)}};
}

json Runner::infer(const Request& request) {
  LoadedVariant& variant = resolve("");
  if (request.input.empty()) {
    fill_pattern(input_);
  } else {
    read_input(request.input);
  }
  std::vector<double> latencies = run(variant, request.n);
  if (!request.output_path.empty()) {
    write_output(request.output_path);
  }
  for (double& latency : latencies) latency = rounded(latency);
  const size_t shown = std::min(last_output_.size(), size_t(request.max_output));
  const auto best = std::max_element(last_output_.begin(), last_output_.end());
  return {{"variant", variant.name},
          {"n", request.n},
          {"latency_ms", latencies},
          {"output_shape", last_output_shape_},
          {"output", std::vector<float>(last_output_.begin(), last_output_.begin() + shown)},
          {"argmax", best == last_output_.end() ? -1 : best - last_output_.begin()}};
}

void Runner::read_input(const std::string& path) {
  // Non-blocking: a FIFO with no writer is refused by the type check instead of hanging here.
  FileDescriptor file{open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)};
  if (file.fd < 0) {
    throw CommandError("cannot open input file '" + path + "': " + std::strerror(errno));
  }
  struct stat info;
  if (fstat(file.fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    throw CommandError("cannot open input file '" + path + "': not a regular file");
  }
  const auto size = static_cast<uint64_t>(info.st_size);
  const uint64_t expected = input_.size() * sizeof(float);
  if (size != expected) {
    throw CommandError("input file '" + path + "' has " + std::to_string(size) +
                       " bytes but the model input float32 " +
                       shape_text({manifest_.input_shape.begin(), manifest_.input_shape.end()}) +
                       " needs " + std::to_string(expected) +
                       " bytes (raw little-endian float32, C order)");
  }
  char* data = reinterpret_cast<char*>(input_.data());
  for (uint64_t done = 0; done < expected;) {
    const ssize_t got = read(file.fd, data + done, expected - done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      throw CommandError("cannot read input file '" + path + "': " +
                         (got < 0 ? std::strerror(errno) : "it shrank while being read"));
    }
    done += uint64_t(got);
  }
}

void Runner::write_output(const std::string& path) {
  const std::string what = "cannot write output file '" + path + "': ";
  // Checked before anything is created or truncated: a regular file outside the portfolio.
  const size_t slash = path.rfind('/');
  const std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") {
    throw CommandError(what + "it does not name a file");
  }
  const std::string resolved = real_path(folder);
  if (resolved.empty()) {
    throw CommandError(what + "its folder '" + folder + "' does not exist");
  }
  if (resolved == portfolio_root_ || resolved.compare(0, portfolio_root_.size() + 1, portfolio_root_ + "/") == 0) {
    throw CommandError(what + "it is inside the portfolio directory '" + portfolio_root_ +
                       "'; write outputs elsewhere");
  }
  // Non-blocking: a FIFO with no reader fails (ENXIO) instead of hanging the runner.
  FileDescriptor file{open(path.c_str(), O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, 0666)};
  if (file.fd < 0) {
    throw CommandError(what + (errno == ENXIO ? std::string("it is a FIFO with no reader")
                                              : std::string(std::strerror(errno))));
  }
  struct stat info;
  if (fstat(file.fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    throw CommandError(what + "not a regular file (output_path must name a regular file, created if "
                       "missing)");
  }
  if (protected_files_.count({uint64_t(info.st_dev), uint64_t(info.st_ino)})) {
    throw CommandError(what + "it is a file of the portfolio (through a link); write outputs elsewhere");
  }
  if (ftruncate(file.fd, 0) != 0) {
    throw CommandError(what + std::strerror(errno));
  }
  const char* data = reinterpret_cast<const char*>(last_output_.data());
  const size_t size = last_output_.size() * sizeof(float);
  for (size_t done = 0; done < size;) {
    const ssize_t wrote = write(file.fd, data + done, size - done);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote < 0) {
      throw CommandError(what + std::strerror(errno));
    }
    done += size_t(wrote);
  }
  const int fd = file.fd;
  file.fd = -1;
  if (close(fd) != 0) {  // a deferred write error (NFS, quota) surfaces here
    throw CommandError(what + std::strerror(errno));
  }
}

json Runner::bench(const Request& request) {
  LoadedVariant& variant = resolve(request.variant);
  fill_pattern(input_);
  if (request.warmup > 0) {
    run(variant, request.warmup);
  }
  std::vector<double> latencies = run(variant, request.runs);
  std::sort(latencies.begin(), latencies.end());
  const double mean = std::accumulate(latencies.begin(), latencies.end(), 0.0) / latencies.size();
  const MemoryUsage memory = memory_usage();
  return {{"variant", variant.name},
          {"warmup", request.warmup},
          {"runs", request.runs},
          {"threads", thread_count()},
          {"load_ms", rounded(variant.load_ms)},
          {"first_infer_ms", rounded(variant.first_infer_ms)},
          {"min_ms", rounded(latencies.front())},
          {"p50_ms", rounded(percentile(latencies, 50))},
          {"p90_ms", rounded(percentile(latencies, 90))},
          {"p99_ms", rounded(percentile(latencies, 99))},
          {"max_ms", rounded(latencies.back())},
          {"mean_ms", rounded(mean)},
          {"rss_kb", memory.rss_kb},
          {"peak_rss_kb", memory.peak_rss_kb}};
}

json Runner::bench_reload(const Request& request) {
  LoadedVariant& variant = resolve(request.variant);
  std::vector<double> load_ms, first_infer_ms;
  for (int64_t i = 0; i < request.runs; ++i) {
    // The same steps as at start-up, into a throw-away module: what switching would cost if
    // variants were loaded from storage on demand instead of kept loaded.
    LoadedVariant fresh;
    fresh.name = variant.name;
    const auto start = Clock::now();
    fresh.module = std::make_unique<Module>(variant.path, Module::LoadMode::Mmap);
    Error status = fresh.module->load(Program::Verification::InternalConsistency);
    if (status == Error::Ok) status = fresh.module->load_method("forward");
    if (status != Error::Ok) {
      throw CommandError("variant '" + variant.name + "': reloading '" + variant.path +
                         "' failed (" + executorch::runtime::to_string(status) +
                         "); the file changed after start-up");
    }
    load_ms.push_back(elapsed_ms(start));
    first_infer_ms.push_back(first_inference_ms(fresh));
  }
  // One preloaded switch is tens of nanoseconds, below the clock's resolution: time a batch
  // of switches (alternating with another variant when there is one) and report the mean.
  LoadedVariant* const before = current_;
  const std::string other = variants_.size() > 1 && variants_.front()->name == variant.name
                                ? variants_[1]->name
                                : variants_.front()->name;
  constexpr int kSwitches = 10000;
  const auto start = Clock::now();
  for (int i = 0; i < kSwitches; ++i) {
    activate((i & 1) ? other : variant.name);
  }
  const double switch_us =
      std::chrono::duration<double, std::micro>(Clock::now() - start).count() / kSwitches;
  current_ = before;
  std::vector<double> sorted_load = load_ms, sorted_first = first_infer_ms;
  std::sort(sorted_load.begin(), sorted_load.end());
  std::sort(sorted_first.begin(), sorted_first.end());
  for (double& value : load_ms) value = rounded(value);
  for (double& value : first_infer_ms) value = rounded(value);
  return {{"variant", variant.name},
          {"runs", request.runs},
          {"load_ms", load_ms},
          {"first_infer_ms", first_infer_ms},
          {"load_p50_ms", rounded(percentile(sorted_load, 50))},
          {"first_infer_p50_ms", rounded(percentile(sorted_first, 50))},
          {"switch_us", rounded(switch_us, 1e4)}};
}

json Runner::stats() const {
  const MemoryUsage memory = memory_usage();
  json loaded = json::array(), failed = json::array();
  for (const auto& variant : variants_) loaded.push_back(variant->name);
  for (const LoadFailure& failure : failures_) failed.push_back(failure.name);
  return {{"rss_kb", memory.rss_kb},
          {"peak_rss_kb", memory.peak_rss_kb},
          {"loaded", loaded},
          {"failed", failed},
          {"current", current_ ? json(current_->name) : json(nullptr)},
          {"precision", options_.precision},
          {"threads", thread_count()},
          {"inferences", inferences_}};
}

json Runner::ready_event(double startup_ms) const {
  json loaded = json::array(), details = json::object(), failed = json::array();
  for (const LoadFailure& failure : failures_) failed.push_back({{"name", failure.name}, {"error", failure.error}});
  for (const auto& variant : variants_) {
    loaded.push_back(variant->name);
    details[variant->name] = {{"bytes", variant->bytes},
                              {"verify_ms", rounded(variant->verify_ms)},
                              {"check_ms", rounded(variant->check_ms)},
                              {"load_ms", rounded(variant->load_ms)},
                              {"first_infer_ms", rounded(variant->first_infer_ms)}};
  }
  const MemoryUsage memory = memory_usage();
  return {{"event", "ready"},
          {"runner", "shifter_runner " SHIFTER_RUNNER_VERSION},
          {"executorch", SHIFTER_EXECUTORCH_VERSION},
          {"portfolio", portfolio_dir_},
          {"precision", options_.precision},
          {"input", {{"shape", manifest_.input_shape}, {"dtype", manifest_.input_dtype}}},
          {"threads", thread_count()},
          {"isolation", isolation_text()},
          {"loaded", loaded},
          {"variants", details},
          {"failed", failed},
          {"current", current_ ? json(current_->name) : json(nullptr)},
          {"startup_ms", rounded(startup_ms)},
          {"rss_kb", memory.rss_kb},
          {"peak_rss_kb", memory.peak_rss_kb}};
}

}  // namespace shifter
