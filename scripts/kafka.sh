#!/usr/bin/env bash
# Fetches Apache Kafka (KRaft broker, storage tool, topic tool, log4j2
# logging) from Maven into tools/kafka/libs/ unless it is already there,
# then prints that folder (a classpath of `libs/*`). Idempotent and quiet.
#   ISOFLOW_KAFKA_LIBS="$(scripts/kafka.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${ISOFLOW_KAFKA_VERSION:-4.1.1}
DIR=tools/kafka
LIBS=$DIR/libs

if ! ls "$LIBS"/kafka_2.13-"$VERSION".jar "$LIBS"/kafka-tools-"$VERSION".jar \
  "$LIBS"/log4j-slf4j-impl-*.jar >/dev/null 2>&1; then
  mkdir -p "$DIR"
  rm -rf "$LIBS"
  cat >"$DIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>isoflow</groupId>
  <artifactId>kafka-test-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- kafka.Kafka (the node) and kafka.tools.StorageTool -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$VERSION</version>
    </dependency>
    <!-- org.apache.kafka.tools.TopicCommand -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.jakarta.rs</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>
    <!-- the broker logs through slf4j 1.7; log4j2 writes it -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
EOF
  if ! (cd "$DIR" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
    -DoutputDirectory=libs -DincludeScope=runtime >mvn.log 2>&1); then
    cat "$DIR/mvn.log" >&2
    exit 1
  fi
fi
echo "$PWD/$LIBS"
