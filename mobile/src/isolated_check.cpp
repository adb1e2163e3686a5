#include "isolated_check.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

extern char** environ;

namespace shifter {

namespace {

int own_argument_count = 0;  // main()'s argc, 0 until remember_argument_count

// The words that start this program again, before its own options: the program alone when it was
// executed directly; the loader, its options and the program when it was started through a loader.
// The kernel's (or qemu-user's) /proc/self/cmdline lists the loader's words first, then the
// program's own argc arguments.
std::vector<std::string> start_words(const std::string& self) {
  std::ifstream file("/proc/self/cmdline", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::vector<std::string> words;
  for (size_t start = 0; start < text.size();) {
    const size_t end = std::min(text.find('\0', start), text.size());
    words.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  if (own_argument_count <= 0 || words.size() <= size_t(own_argument_count)) {
    return {self};  // started directly (or cmdline unreadable): argv[0] is this executable
  }
  words.resize(words.size() - size_t(own_argument_count) + 1);  // loader words + program path
  words[0] = self;
  return words;
}

}  // namespace

void remember_argument_count(int argc) { own_argument_count = argc; }

IsolatedCheck check_in_subprocess(const std::string& portfolio_dir, const std::string& precision,
                                  const std::string& variant, uint32_t threads) {
  // readlink rather than exec'ing /proc/self/exe itself: under qemu-user only the former names
  // the emulated program instead of the emulator. Started through a loader, this is the loader.
  char self[PATH_MAX];
  const ssize_t length = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (length <= 0) {
    return {IsolatedCheck::Outcome::Unavailable, "cannot find this executable in /proc/self/exe"};
  }
  self[length] = '\0';
  std::vector<std::string> arguments = start_words(self);
  arguments.insert(arguments.end(),
                   {"--portfolio", portfolio_dir, "--precision", precision, "--variants", variant,
                    "--verify", "none", "--isolate", "off", "--bench", "--warmup", "0", "--runs", "1"});
  if (threads > 0) {
    arguments.insert(arguments.end(), {"--threads", std::to_string(threads)});
  }
  std::vector<char*> argv;
  for (auto& argument : arguments) argv.push_back(argument.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t child = 0;
  const int spawn_error = posix_spawn(&child, self, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_error != 0) {
    return {IsolatedCheck::Outcome::Unavailable,
            std::string("cannot start a child process: ") + std::strerror(spawn_error)};
  }
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) {
      return {IsolatedCheck::Outcome::Unavailable, std::string("waitpid: ") + std::strerror(errno)};
    }
  }
  if (WIFSIGNALED(status)) {
    const int signal_number = WTERMSIG(status);
    return {IsolatedCheck::Outcome::Crashed,
            "signal " + std::to_string(signal_number) + " (" + strsignal(signal_number) + ")"};
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    return {IsolatedCheck::Outcome::Passed, ""};
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    // glibc reports an exec failure this way when it cannot pass errno back (e.g. qemu-user
    // without binfmt_misc cannot exec a foreign binary).
    return {IsolatedCheck::Outcome::Unavailable, "the child could not execute this program"};
  }
  return {IsolatedCheck::Outcome::Failed, ""};
}

}  // namespace shifter
