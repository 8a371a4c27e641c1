"""Sets up and reads back AWS resources on a moto server for tests/aws.rs.

Usage: aws_moto.py ENDPOINT COMMAND ARGS...

  create-stream NAME SHARDS        a Kinesis data stream, waited until ACTIVE
  read-stream NAME                 every record of every shard, as JSON lines
                                   {"shard","partition_key","data"}
  create-firehose NAME BUCKET      an S3 bucket and a DirectPut delivery stream into it
  read-bucket BUCKET               every object, as JSON lines {"key","body"}
  create-log-group NAME            a CloudWatch Logs log group
  read-log-group NAME              every event of every stream, as JSON lines
                                   {"stream","timestamp","message"}

Prints one JSON document per line on stdout; exits non-zero with the
error on stderr.
"""

import json
import sys
import time

import boto3

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/firehose-to-s3"


def client(endpoint, service):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def main():
    endpoint, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if cmd == "create-stream":
        k = client(endpoint, "kinesis")
        k.create_stream(StreamName=args[0], ShardCount=int(args[1]))
        for _ in range(100):
            d = k.describe_stream(StreamName=args[0])["StreamDescription"]
            if d["StreamStatus"] == "ACTIVE":
                break
            time.sleep(0.05)
    elif cmd == "read-stream":
        k = client(endpoint, "kinesis")
        shards = k.list_shards(StreamName=args[0])["Shards"]
        for s in shards:
            it = k.get_shard_iterator(
                StreamName=args[0], ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while it:
                r = k.get_records(ShardIterator=it, Limit=10000)
                for rec in r["Records"]:
                    print(
                        json.dumps(
                            {
                                "shard": s["ShardId"],
                                "partition_key": rec["PartitionKey"],
                                "data": rec["Data"].decode("utf-8"),
                            }
                        )
                    )
                if not r["Records"]:
                    break
                it = r.get("NextShardIterator")
    elif cmd == "create-firehose":
        name, bucket = args
        client(endpoint, "s3").create_bucket(Bucket=bucket)
        client(endpoint, "firehose").create_delivery_stream(
            DeliveryStreamName=name,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": ROLE,
                "BucketARN": "arn:aws:s3:::" + bucket,
                "Prefix": "sluice/",
            },
        )
    elif cmd == "read-bucket":
        s3 = client(endpoint, "s3")
        token = None
        while True:
            kw = {"Bucket": args[0]}
            if token:
                kw["ContinuationToken"] = token
            r = s3.list_objects_v2(**kw)
            for o in r.get("Contents", []):
                body = s3.get_object(Bucket=args[0], Key=o["Key"])["Body"].read()
                print(json.dumps({"key": o["Key"], "body": body.decode("utf-8")}))
            if not r.get("IsTruncated"):
                break
            token = r["NextContinuationToken"]
    elif cmd == "create-log-group":
        client(endpoint, "logs").create_log_group(logGroupName=args[0])
    elif cmd == "read-log-group":
        logs = client(endpoint, "logs")
        streams = logs.describe_log_streams(logGroupName=args[0])["logStreams"]
        for s in streams:
            token = None
            while True:
                kw = {
                    "logGroupName": args[0],
                    "logStreamName": s["logStreamName"],
                    "startFromHead": True,
                }
                if token:
                    kw["nextToken"] = token
                r = logs.get_log_events(**kw)
                for e in r["events"]:
                    print(
                        json.dumps(
                            {
                                "stream": s["logStreamName"],
                                "timestamp": e["timestamp"],
                                "message": e["message"],
                            }
                        )
                    )
                if not r["events"] or r.get("nextForwardToken") == token:
                    break
                token = r["nextForwardToken"]
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
