#include <gtest/gtest.h>
#include "core/error.h"
TEST(Smoke, ErrorCarriesMessage) { EXPECT_STREQ(dsv4::Error("x").what(), "x"); }
