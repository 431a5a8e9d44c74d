// Command greeter is a grpc-go Greeter client and server for interop tests:
// the Go half of calls between grpc-go and this workspace's Rust services.
//
// It needs no generated code and no protoc: messages travel through a raw
// codec (grpc.ForceCodec on the client, grpc.CustomCodec on the server) and
// the two one-field messages of proto/helloworld.proto are encoded by hand.
// It builds offline against Debian's grpc-go (golang-google-grpc-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o greeter .
//
// Client: calls helloworld.Greeter/SayHello -calls times on one connection,
// with the authority a kratos warden client sends, and prints one JSON line
// per answer ({"message": ..., "served_by": ...}); exits 1 on the first
// failed call.
//
//	greeter -addr 127.0.0.1:9000 -name go
//
// With -ca, the client speaks TLS, verifying the server with that PEM
// bundle against the host of -addr (the authority stays the warden one).
//
// Server: serves the Greeter on -listen, answering "Hello <name>" and, like
// a kratos Go Greeter, no x-served-by; writes its bound address to
// -ready-file (replaced atomically) once it accepts connections.
//
//	greeter -serve -listen 127.0.0.1:0 -ready-file /tmp/addr
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

const sayHello = "/helloworld.Greeter/SayHello"

// rawCodec passes messages through as bytes: *[]byte in, *[]byte out.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	// The transport may reuse data's buffer after this returns.
	*b = append([]byte(nil), data...)
	return nil
}

// Name is the codec's content-subtype. "proto" keeps the content-type
// plain application/grpc, as a generated client sends it.
func (rawCodec) Name() string { return "proto" }

// String is what grpc.CustomCodec's older Codec interface asks for.
func (rawCodec) String() string { return "proto" }

// encodeString encodes a message whose only field, number 1, is the string
// s (HelloRequest.name, HelloReply.message).
func encodeString(s string) []byte {
	out := []byte{0x0a} // field 1, wire type 2 (length-delimited)
	out = appendVarint(out, uint64(len(s)))
	return append(out, s...)
}

func appendVarint(out []byte, v uint64) []byte {
	for v >= 0x80 {
		out = append(out, byte(v)|0x80)
		v >>= 7
	}
	return append(out, byte(v))
}

func readVarint(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * uint(i))
		if b[i] < 0x80 {
			return v, i + 1, nil
		}
	}
	return 0, 0, errors.New("truncated varint")
}

// decodeString returns field 1 of a message whose field 1 is a string,
// skipping any other field as a protobuf parser does; the last occurrence
// wins. A missing field is the empty string (proto3's default).
func decodeString(b []byte) (string, error) {
	var s string
	for len(b) > 0 {
		key, n, err := readVarint(b)
		if err != nil {
			return "", err
		}
		b = b[n:]
		field, wire := key>>3, key&7
		switch wire {
		case 0:
			_, n, err = readVarint(b)
			if err != nil {
				return "", err
			}
			b = b[n:]
		case 1, 5:
			size := 8
			if wire == 5 {
				size = 4
			}
			if len(b) < size {
				return "", errors.New("truncated fixed field")
			}
			b = b[size:]
		case 2:
			l, n, err := readVarint(b)
			if err != nil {
				return "", err
			}
			b = b[n:]
			if uint64(len(b)) < l {
				return "", errors.New("truncated length-delimited field")
			}
			if field == 1 {
				s = string(b[:l])
			}
			b = b[l:]
		default:
			return "", fmt.Errorf("unsupported wire type %d", wire)
		}
	}
	return s, nil
}

func main() {
	serve := flag.Bool("serve", false, "serve the Greeter instead of calling it")
	addr := flag.String("addr", "", "client: the server's host:port")
	authority := flag.String("authority", "demo.service?subset=50",
		"client: the :authority sent (a kratos warden client's by default)")
	name := flag.String("name", "go", "client: HelloRequest.name")
	calls := flag.Int("calls", 1, "client: calls made on one connection")
	timeout := flag.Duration("timeout", 10*time.Second, "client: deadline of each call")
	listen := flag.String("listen", "127.0.0.1:0", "server: listen address")
	readyFile := flag.String("ready-file", "", "server: write the bound address here once serving")
	ca := flag.String("ca", "", "client: PEM bundle verifying a TLS server (plaintext without it)")
	flag.Parse()

	if *serve {
		if err := runServer(*listen, *readyFile); err != nil {
			log.Fatalf("greeter server: %v", err)
		}
		return
	}
	if *addr == "" {
		log.Fatal("greeter: -addr is required (or -serve)")
	}
	if err := runClient(*addr, *authority, *name, *calls, *timeout, *ca); err != nil {
		log.Fatalf("greeter client: %v", err)
	}
}

func runClient(addr, authority, name string, calls int, timeout time.Duration, ca string) error {
	transport := grpc.WithInsecure()
	if ca != "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return err
		}
		// The server name is the dialled host: the warden authority is
		// no name a certificate carries.
		creds, err := credentials.NewClientTLSFromFile(ca, host)
		if err != nil {
			return err
		}
		transport = grpc.WithTransportCredentials(creds)
	}
	opts := []grpc.DialOption{transport, grpc.WithAuthority(authority)}
	conn, err := grpc.Dial(addr, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	out := json.NewEncoder(os.Stdout)
	for i := 0; i < calls; i++ {
		req := encodeString(name)
		var reply []byte
		var header metadata.MD
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		// WaitForReady: the first call waits for the connection instead
		// of failing while it is still being made.
		err := conn.Invoke(ctx, sayHello, &req, &reply,
			grpc.ForceCodec(rawCodec{}), grpc.Header(&header), grpc.WaitForReady(true))
		cancel()
		if err != nil {
			return fmt.Errorf("call %d: %v", i+1, err)
		}
		message, err := decodeString(reply)
		if err != nil {
			return fmt.Errorf("call %d: HelloReply: %v", i+1, err)
		}
		servedBy := ""
		if v := header.Get("x-served-by"); len(v) > 0 {
			servedBy = v[0]
		}
		if err := out.Encode(map[string]string{"message": message, "served_by": servedBy}); err != nil {
			return err
		}
	}
	return nil
}

// greeterDesc describes helloworld.Greeter without generated code; the
// handler type is the empty interface, which any server value implements.
var greeterDesc = grpc.ServiceDesc{
	ServiceName: "helloworld.Greeter",
	HandlerType: (*interface{})(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "SayHello",
		Handler: func(_ interface{}, _ context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
			var req []byte
			if err := dec(&req); err != nil {
				return nil, err
			}
			name, err := decodeString(req)
			if err != nil {
				return nil, err
			}
			reply := encodeString("Hello " + name)
			return &reply, nil
		},
	}},
	Metadata: "helloworld.proto",
}

func runServer(listen, readyFile string) error {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.CustomCodec(rawCodec{}))
	srv.RegisterService(&greeterDesc, struct{}{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		srv.GracefulStop()
	}()
	bound := lis.Addr().String()
	log.Printf("greeter server listening on %s", bound)
	// The listener accepts (into its backlog) from here on, so the address
	// can be published before Serve runs.
	if readyFile != "" {
		if err := writeAtomically(readyFile, bound); err != nil {
			return err
		}
	}
	return srv.Serve(lis)
}

// writeAtomically replaces path with text: a reader sees the old file or
// the whole new one.
func writeAtomically(path, text string) error {
	tmp, err := ioutil.TempFile(filepath.Dir(path), filepath.Base(path)+".tmp")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(text); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
