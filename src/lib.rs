pub use losa_attention;
