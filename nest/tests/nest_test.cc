#include "nest/nest.h"
#include <gtest/gtest.h>
TEST(NestTest, Placeholder) { nest::Nest<int> n(1); EXPECT_EQ(n.front(), 1); }
