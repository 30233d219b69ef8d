// SPDX-License-Identifier: MIT
//
// The test-only fault hook (broker/fault_point.h): which specs arm which process, that only the nth
// occurrence of the armed point is due, and that a once-file makes it fire in one process only. Die()
// is never called here; the integration test fault_injection_test.cc kills real processes with it.
// Single-threaded.
#include "broker/fault_point.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <unistd.h>

namespace sluice::fault {
namespace {

class FaultPointTest : public ::testing::Test {
 protected:
  void TearDown() override { Arm("", Process::kWorker); }
};

TEST_F(FaultPointTest, UnarmedNothingIsDue) {
  EXPECT_FALSE(Arm("", Process::kWorker));
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(Due(Point::kWorkerBeforeHandle));
}

TEST_F(FaultPointTest, OnlyTheNthOccurrenceOfTheArmedPointIsDue) {
  ASSERT_TRUE(Arm("worker.after_send:3", Process::kWorker));
  EXPECT_FALSE(Due(Point::kWorkerBeforeHandle));  // another point does not count
  EXPECT_FALSE(Due(Point::kWorkerAfterSend));
  EXPECT_FALSE(Due(Point::kWorkerAfterSend));
  EXPECT_FALSE(Due(Point::kWorkerBeforeHandle));
  EXPECT_TRUE(Due(Point::kWorkerAfterSend));
  EXPECT_FALSE(Due(Point::kWorkerAfterSend));
}

TEST_F(FaultPointTest, EachPointArmsByItsName) {
  for (Point p : {Point::kWorkerBeforeHandle, Point::kWorkerAfterHandle, Point::kWorkerAfterSend,
                  Point::kWorkerBeforeAck, Point::kDaemonAfterCommit}) {
    std::string name(PointName(p));
    Process process = name.starts_with("worker.") ? Process::kWorker : Process::kDaemon;
    ASSERT_TRUE(Arm(name + ":1", process)) << name;
    EXPECT_TRUE(Due(p)) << name;
  }
}

TEST_F(FaultPointTest, APointOfTheOtherProcessArmsNothing) {
  // The supervisor hands the daemon's environment to its workers: each ignores the other's points.
  EXPECT_FALSE(Arm("worker.before_ack:1", Process::kDaemon));
  EXPECT_FALSE(Due(Point::kWorkerBeforeAck));
  EXPECT_FALSE(Arm("daemon.after_commit:1", Process::kWorker));
  EXPECT_FALSE(Due(Point::kDaemonAfterCommit));
}

TEST_F(FaultPointTest, MalformedSpecsArmNothing) {
  for (const char* spec : {"worker.after_send", "worker.after_send:", "worker.after_send:0",
                           "worker.after_send:x", "worker.after_send:2x", "worker.after_send:-1",
                           "worker.after_send:1:", "worker.nosuch:1", ":1", "worker.:1"}) {
    EXPECT_FALSE(Arm(spec, Process::kWorker)) << spec;
    EXPECT_FALSE(Due(Point::kWorkerAfterSend)) << spec;
  }
}

TEST_F(FaultPointTest, AOnceFileLetsTheFaultFireInOneProcessOnly) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "fault-point-XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const std::filesystem::path dir = tmpl;
  const std::filesystem::path once = dir / "fired";
  const std::string spec = "worker.before_ack:2:" + once.string();

  ASSERT_TRUE(Arm(spec, Process::kWorker));
  EXPECT_FALSE(Due(Point::kWorkerBeforeAck));
  EXPECT_TRUE(Due(Point::kWorkerBeforeAck));
  std::ifstream in(once);
  std::stringstream note;
  note << in.rdbuf();
  EXPECT_EQ(note.str(), "worker.before_ack 2 " + std::to_string(::getpid()) + "\n");

  // A restarted process (armed afresh, the file still there) goes on past the nth occurrence.
  ASSERT_TRUE(Arm(spec, Process::kWorker));
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(Due(Point::kWorkerBeforeAck));

  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sluice::fault
